"""Experiment tracking: W&B when configured, nothing otherwise.

Mode: ``logger.mode`` when set explicitly; with ``auto``, ``$WANDB_MODE`` if the environment sets
it, else online when credentials exist and offline otherwise, so a run on a machine without
internet never blocks on a login (``wandb sync`` uploads it later). ``disabled`` creates nothing
at all. A resumed run continues the same W&B run: its id is kept in the run directory.

What a run logs: per step the training loss, learning rate, gradient norm and tokens/s; per
epoch the validation loss; at the end each set's accuracy and the average, the predictions and
the plan as tables, trainable parameters and peak memory in the summary, and (``logger.log_adapter``)
the adapter as an artifact. The config gets the plan as numbers W&B can chart against accuracy
(layers per segment, the bottom part's share). Sweep jobs share one group: the sweep directory,
with its date.
"""

from __future__ import annotations

import json
import netrc
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

RUN_ID_FILE = "wandb_id"


def _has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> str:
    """The W&B mode a ``logger.mode`` means here (see the module docstring)."""
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env:
        return "disabled" if env in ("disabled", "dryrun-disabled") else env
    return "online" if _has_credentials() else "offline"


def plan_numbers(plan: dict[str, Any]) -> dict[str, Any]:
    """The plan as numbers: layers per segment (bottom to top) and the bottom part's share."""
    sizes = [end - start for start, end in dict.fromkeys((s["start"], s["end"]) for s in plan["segments"])]
    return {"segment_layers": sizes, "bottom_layers": sizes[0], "top_layers": sizes[-1],
            "bottom_share": sizes[0] / plan["num_layers"], "tuned_layers": sum(1 for kinds in plan["layers"] if kinds)}


class Tracker:
    """Does nothing; the interface every tracker has."""

    def log(self, values: dict[str, Any], step: int | None = None) -> None: ...

    def log_plan(self, plan: dict[str, Any], layer_params: list[int]) -> None: ...

    def log_eval(self, metrics: dict[str, Any], predictions: Path | None = None) -> None: ...

    def log_summary(self, values: dict[str, Any]) -> None: ...

    def log_adapter(self, directory: Path) -> None: ...

    def finish(self, failed: bool = False) -> None: ...


class WandbTracker(Tracker):
    def __init__(self, cfg: DictConfig, run_dir: Path, group: str | None, mode: str):
        import wandb

        lc = cfg.logger
        self.wandb, self.log_adapters = wandb, bool(lc.get("log_adapter", False))
        id_file = run_dir / RUN_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        self.run = wandb.init(project=lc.project, entity=lc.entity, mode=mode, dir=str(run_dir),
                              group=lc.group or group, name=run_dir.name, tags=list(lc.tags),
                              config=OmegaConf.to_container(cfg, resolve=True), id=run_id,
                              resume="allow" if run_id else None, reinit="finish_previous")
        id_file.write_text(self.run.id)

    def log(self, values, step=None):
        self.run.log(values, step=step)

    def log_plan(self, plan, layer_params):
        self.run.config.update({"plan": plan_numbers(plan)}, allow_val_change=True)
        table = self.wandb.Table(columns=["layer", "modules", "trainable params"])
        for i, (kinds, n) in enumerate(zip(plan["layers"], layer_params)):
            table.add_data(i, ", ".join(kinds) or "-", n)
        self.run.log({"plan": table})

    def log_eval(self, metrics, predictions=None):
        table = self.wandb.Table(columns=["dataset", "n", "correct", "accuracy"])
        values = {}
        for name, m in metrics["datasets"].items():
            table.add_data(name, m["n"], m["correct"], m["accuracy"])
            values[f"eval/{name}/accuracy"] = m["accuracy"]
        values["eval/average"] = metrics["average"]
        self.run.summary.update(values)
        logged = {**values, "eval/accuracy_table": table}
        if predictions is not None and predictions.is_file():
            columns = ["dataset", "index", "instruction", "response", "gold", "pred", "correct"]
            rows = [json.loads(line) for line in predictions.read_text().splitlines()]
            logged["eval/predictions"] = self.wandb.Table(columns=columns,
                                                          data=[[str(r.get(c)) for c in columns] for r in rows])
        self.run.log(logged)

    def log_summary(self, values):
        self.run.summary.update(values)

    def log_adapter(self, directory):
        if self.log_adapters and directory.is_dir():
            artifact = self.wandb.Artifact(f"adapter-{self.run.id}", type="model")
            artifact.add_dir(str(directory))
            self.run.log_artifact(artifact)

    def finish(self, failed=False):
        self.run.finish(exit_code=1 if failed else 0)


def make_tracker(cfg: DictConfig, run_dir: Path, group: str | None = None) -> Tracker:
    name = cfg.logger.name
    if name == "none":
        return Tracker()
    if name == "wandb":
        mode = resolve_mode(cfg.logger.mode)
        return Tracker() if mode == "disabled" else WandbTracker(cfg, run_dir, group, mode)
    raise ValueError(f"logger {name!r} is not one of wandb, none")
