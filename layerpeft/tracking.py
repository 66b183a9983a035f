"""Experiment tracking: W&B when configured, nothing otherwise.

Offline is the fallback whenever no credentials are found, so a run on a machine without
internet never blocks on a login; the offline run lands in ``<run_dir>/wandb`` and can be
uploaded later with ``wandb sync``. Sweep jobs share one W&B group: the sweep directory.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


def _has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


class Tracker:
    """Does nothing; the interface every tracker has."""

    def log(self, values: dict[str, Any], step: int | None = None) -> None: ...

    def log_eval(self, metrics: dict[str, Any]) -> None: ...

    def finish(self, failed: bool = False) -> None: ...


class WandbTracker(Tracker):
    def __init__(self, cfg: DictConfig, run_dir: Path, group: str | None):
        import wandb

        lc = cfg.logger
        mode = lc.mode
        if mode == "auto":
            mode = "online" if _has_credentials() else "offline"
        self.wandb = wandb
        self.run = wandb.init(
            project=lc.project,
            entity=lc.entity,
            mode=mode,
            dir=str(run_dir),
            group=lc.group or group,
            name=run_dir.name,
            tags=list(lc.tags),
            config=OmegaConf.to_container(cfg, resolve=True),
            reinit="finish_previous",
        )

    def log(self, values, step=None):
        self.run.log(values, step=step)

    def log_eval(self, metrics):
        table = self.wandb.Table(columns=["dataset", "n", "correct", "accuracy"])
        for name, m in metrics["datasets"].items():
            table.add_data(name, m["n"], m["correct"], m["accuracy"])
            self.run.summary[f"eval/{name}/accuracy"] = m["accuracy"]
        self.run.summary["eval/average"] = metrics["average"]
        self.run.log({"eval/accuracy_table": table})

    def finish(self, failed=False):
        self.run.finish(exit_code=1 if failed else 0)


def make_tracker(cfg: DictConfig, run_dir: Path, group: str | None = None) -> Tracker:
    name = cfg.logger.name
    if name == "none":
        return Tracker()
    if name == "wandb":
        return WandbTracker(cfg, run_dir, group)
    raise ValueError(f"logger {name!r} is not one of wandb, none")
