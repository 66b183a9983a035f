"""Where the Hydra configs live, and composing them outside the CLI (tests, notebooks)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from hydra import compose as _compose
from hydra import initialize_config_dir
from omegaconf import DictConfig, OmegaConf

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
# ``${basename:…}``: a model named by its directory or hub id (``model=hf``), for run directory names
OmegaConf.register_new_resolver("basename", lambda p: Path(str(p).rstrip("/")).name, replace=True)


def compose(config_name: str = "train", overrides: Iterable[str] = ()) -> DictConfig:
    """The config ``layerpeft <config_name> <overrides…>`` would run with."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return _compose(config_name=config_name, overrides=list(overrides))
