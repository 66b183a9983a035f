"""The run directory: what a finished run leaves behind, and loading it back.

    config.yaml        resolved config of the run
    plan.json          the layer plan with per-layer parameter counts
    metrics.json       {"datasets": {name: {n, correct, accuracy}}, "average", "train": {...}, ...}
    predictions.jsonl  one generated answer per evaluated example
    adapter/           adapter.safetensors (+ peft/ for plain LoRA: PeftModel.from_pretrained)
    ist.json           IST only: importance trajectory and per-step layer selections
    checkpoints/       step_<n>/ for train.resume=true
    .lock              held by the process writing the run (its pid)

A run directory belongs to one run: the default name carries the time to the microsecond, a
lock keeps a second process out, a new run into a directory that holds one is refused unless
it resumes it, and a stored config is read back literally (never resolving an environment
interpolation someone put in it).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from layerpeft.errors import UserError

CONFIG, PLAN, METRICS, PREDICTIONS, ADAPTER_DIR = "config.yaml", "plan.json", "metrics.json", "predictions.jsonl", "adapter"
IST_FILE, LOCK, CHECKPOINTS = "ist.json", ".lock", "checkpoints"
#: What Hydra writes into a run directory before the run starts (not the run's own files).
HYDRA_FILES = (".hydra", "train.log", "eval.log")


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` has files of a run (anything beyond what Hydra writes first)."""
    run_dir = Path(run_dir)
    return run_dir.is_dir() and any(p.name not in HYDRA_FILES + (LOCK,) for p in run_dir.iterdir())


def discard_hydra_only(run_dir: Path) -> None:
    """Remove a run directory that holds nothing but Hydra's files, and the date and ``outputs``
    directories above it if that leaves them empty: a run refused before it wrote anything
    leaves nothing behind."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or holds_run(run_dir):
        return
    for name in HYDRA_FILES + (LOCK,):
        p = run_dir / name
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    for d in (run_dir, run_dir.parent, run_dir.parent.parent)[: 3 if run_dir.parent.parent.name == "outputs" else 1]:
        try:
            d.rmdir()  # only if empty: something else there is kept
        except OSError:
            break


class RunLock:
    """``run_dir/.lock`` holding this process's pid for as long as the run writes there. A lock
    left by a process that no longer exists is taken over; one held by a live process refuses."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and holder != os.getpid() and _alive(holder):
                    raise UserError(f"run directory {self.path.parent} is being written by process {holder}; "
                                    "choose another hydra.run.dir or wait for it") from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self
        raise UserError(f"run directory {self.path.parent}: could not take its lock {self.path}")

    def _holder(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc) -> None:
        if self._holder() == os.getpid():
            self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load_stored_config(path: Path) -> DictConfig:
    """A run's stored config, refusing interpolations: run configs are saved resolved, so one
    that holds ``${…}`` was edited, and resolving it could read the environment (``oc.env``)
    into this run's outputs."""
    path = Path(path)
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # YAML errors come in several types
        raise UserError(f"{path}: not a readable run config ({e})") from None
    if not isinstance(cfg, DictConfig):
        raise UserError(f"{path}: not a run config (a mapping was expected)")
    bad = _interpolations(cfg, "")
    if bad:
        raise UserError(f"{path}: key {bad[0]} holds an interpolation; stored run configs are resolved "
                        "values and are read literally")
    return cfg


def _interpolations(node, prefix: str) -> list[str]:
    found = []
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for k in keys:
        name = f"{prefix}{k}" if isinstance(node, DictConfig) else f"{prefix[:-1]}[{k}]."
        if OmegaConf.is_interpolation(node, k):
            found.append(name.rstrip("."))
            continue
        child = node[k]
        if isinstance(child, (DictConfig, ListConfig)):
            found += _interpolations(child, f"{name}.")
    return found


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)


def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    p = Path(run_dir) / METRICS
    return json.loads(p.read_text()) if p.is_file() else None


def load_run(run_dir: str | Path, device: str = "cpu"):
    """(model, tokenizer) of a finished run: base model + its trained adapter, in eval mode."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise FileNotFoundError(f"{run_dir} is not a layerpeft run directory (no {CONFIG})")
    # imported here, not at the top: the rest of this module serves `report` and the CLI, which
    # need no model code
    from layerpeft.models.loading import load_model
    from layerpeft.peft_model import load_adapter

    cfg = load_stored_config(run_dir / CONFIG)
    model, tok = load_model(cfg.model, device=device)
    if (run_dir / ADAPTER_DIR).is_dir():
        load_adapter(model, run_dir / ADAPTER_DIR)
    elif cfg.method.name != "none":
        raise UserError(f"{run_dir}: no {ADAPTER_DIR}/ (the run did not finish training, or diverged)")
    return model.eval(), tok


#: Keys a resumed run may change: where and how fast it runs, how it logs, not what it computes.
RESUME_MAY_CHANGE = ("train.resume", "train.save_steps", "train.log_every", "train.device", "eval.batch_size",
                     "eval.enabled", "logger.", "data.dir")


def _flat(node, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (node.items() if isinstance(node, dict) else enumerate(node)):
        key = f"{prefix}{k}"
        if isinstance(v, (dict, list)) and v:
            out.update(_flat(v, f"{key}."))
        else:
            out[key] = v
    return out


def resume_changes(stored: DictConfig, cfg: DictConfig, run_dir: Path) -> dict[str, list[Any]]:
    """The keys a resume changes, ``{key: [stored, new]}``; ``UserError`` naming the keys when a
    change would alter the run's result (method, plan, data, optimisation, seed, evaluation)."""
    old = _flat(OmegaConf.to_container(stored, resolve=False))
    new = _flat(OmegaConf.to_container(cfg, resolve=True))
    changed = {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    refused = [k for k in changed if not k.startswith(RESUME_MAY_CHANGE)]
    if refused:
        shown = ", ".join(f"{k}: {changed[k][0]!r} -> {changed[k][1]!r}" for k in refused[:6])
        more = f" and {len(refused) - 6} more" if len(refused) > 6 else ""
        raise UserError(f"train.resume=true: {run_dir} was run with other settings ({shown}{more}); resuming "
                        "would mix two runs. Resume with its own settings, or start a new run directory")
    return changed
