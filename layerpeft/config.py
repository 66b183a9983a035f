"""Where the Hydra configs live, and composing them outside the CLI (tests, notebooks)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from hydra import compose as _compose
from hydra import initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
# ``${basename:…}``: a model named by its directory or hub id (``model=hf``), for run directory names
OmegaConf.register_new_resolver("basename", lambda p: Path(str(p).rstrip("/")).name, replace=True)
# ``${unescape:…}``: Hydra's override_dirname escapes ':' (``layer_ratio=5\:27``); a sweep job's
# directory is named without the backslash, which a shell would otherwise need quoted
OmegaConf.register_new_resolver("unescape", lambda s: str(s).replace("\\", ""), replace=True)


def compose(config_name: str = "train", overrides: Iterable[str] = ()) -> DictConfig:
    """The config ``layerpeft <config_name> <overrides…>`` would run with."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = _compose(config_name=config_name, overrides=list(overrides))
    if config_name == "train":
        with_default_dataset(cfg)
    return cfg


def with_default_dataset(cfg: DictConfig) -> DictConfig:
    """``layerpeft train`` without ``dataset=…`` uses the model's ``default_dataset``: the papers'
    math protocol for real models, the synthetic task (no data needed) for the embedded and tiny
    ones. (A group default that depends on another group is not something Hydra composes.)"""
    if cfg.get("dataset") is None:
        name = cfg.model.get("default_dataset") or "synthetic_math"
        with open_dict(cfg):
            cfg.dataset = OmegaConf.load(Path(CONF_DIR) / "dataset" / f"{name}.yaml")
    return cfg
