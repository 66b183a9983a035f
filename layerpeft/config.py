"""Where the Hydra configs live, and composing them outside the CLI (tests, notebooks)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from hydra import compose as _compose
from hydra import initialize_config_dir
from omegaconf import DictConfig

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def compose(config_name: str = "train", overrides: Iterable[str] = ()) -> DictConfig:
    """The config ``layerpeft <config_name> <overrides…>`` would run with."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return _compose(config_name=config_name, overrides=list(overrides))
