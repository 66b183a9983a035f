"""Training checkpoints without pickles: adapter + optimizer tensors in safetensors, the rest JSON.

``checkpoints/step_<n>/`` holds ``adapter.safetensors`` (the plan in its metadata),
``optimizer.safetensors`` (AdamW moments per parameter index, RNG states) and ``state.json``
(step, histories, param-group hyper-parameters, and the sha256 of both tensor files).

A checkpoint is written to ``step_<n>.tmp/`` and renamed, so a run killed mid-write never leaves
a half checkpoint under a real name; leftovers are ignored and cleaned. Resuming *verifies*: a
checkpoint whose files are missing, unreadable, fail their checksum or hold a non-finite value
is skipped with a line naming it, and the one before is used. "Last good" means verified.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from layerpeft.errors import UserError
from layerpeft.peft_model import ADAPTER_FILE, get_adapters, save_adapter
from layerpeft.rundir import CHECKPOINTS

log = logging.getLogger(__name__)
OPTIM_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
TENSOR_FILES = (ADAPTER_FILE, OPTIM_FILE)
_NAME = re.compile(r"step_(\d+)$")


class CheckpointError(UserError):
    """A checkpoint that cannot be used, naming the file and why."""


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(run_dir: Path, model, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                    extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    final = checkpoint_dir(run_dir) / f"step_{state['step']:06d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_adapter(model, tmp)
    opt = optimizer.state_dict()
    tensors = {"rng.cpu": torch.get_rng_state(), **(extra_tensors or {})}
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    for index, pstate in opt["state"].items():
        for key, value in pstate.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"state.{index}.{key}"] = t.detach().to("cpu").contiguous()
    save_file(tensors, str(tmp / OPTIM_FILE))
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt["param_groups"]]
    checksums = {name: _sha256(tmp / name) for name in TENSOR_FILES}
    (tmp / STATE_FILE).write_text(json.dumps({**state, "param_groups": groups, "sha256": checksums}))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several types for truncated or garbled files
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def verify(path: Path) -> dict[str, Any]:
    """The checkpoint's state if it is complete, matches its checksums and holds only finite
    adapter values; ``CheckpointError`` naming the file and the reason otherwise."""
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise CheckpointError(f"{state_file}: missing (the checkpoint is incomplete)")
    try:
        state = json.loads(state_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{state_file}: not readable JSON ({e})") from None
    sums = state.get("sha256") or {}
    for name in TENSOR_FILES:
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing")
        if name not in sums:
            raise CheckpointError(f"{state_file}: no checksum for {name} (written by an older layerpeft?)")
        if _sha256(f) != sums[name]:
            raise CheckpointError(f"{f}: checksum mismatch (the file changed or was cut short after it was saved)")
    bad = [k for k, t in _read_tensors(path / ADAPTER_FILE).items() if t.is_floating_point() and not t.isfinite().all()]
    if bad:
        raise CheckpointError(f"{path / ADAPTER_FILE}: non-finite values in {', '.join(bad[:3])}")
    return state


def find_resumable(run_dir: Path) -> Path | None:
    """The newest verified checkpoint of ``run_dir`` (None when it has none). Leftover ``.tmp``
    directories of interrupted saves are removed; rejected checkpoints are reported and skipped.
    When checkpoints exist but none verifies, resuming is refused rather than silently
    restarting at step 0."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return None
    for leftover in root.glob("step_*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)
        log.warning(f"removed {leftover}: an interrupted checkpoint save")
    candidates = sorted((p for p in root.iterdir() if _NAME.match(p.name) and p.is_dir()),
                        key=lambda p: int(_NAME.match(p.name).group(1)), reverse=True)
    rejected = []
    for path in candidates:
        try:
            verify(path)
            return path
        except CheckpointError as e:
            rejected.append(str(e))
            log.warning(f"skipping checkpoint {path.name}: {e}")
    if rejected:
        raise CheckpointError(f"train.resume=true: no usable checkpoint in {root} ({'; '.join(rejected)})")
    return None


def load_checkpoint(path: Path, model, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore adapter weights, optimizer moments and RNG from a verified checkpoint; return the
    saved training state (with the checkpoint's other tensors, e.g. IST's, under ``"tensors"``)."""
    state = verify(path)
    adapters = get_adapters(model)
    with safe_open(str(path / ADAPTER_FILE), framework="pt") as f:
        adapters.load_adapter_state({k: f.get_tensor(k) for k in f.keys()})
    tensors = _read_tensors(path / OPTIM_FILE)
    opt = optimizer.state_dict()
    restored: dict[int, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        if name.startswith("state."):
            _, index, key = name.split(".", 2)
            restored.setdefault(int(index), {})[key] = t
    for group, saved in zip(opt["param_groups"], state["param_groups"]):
        group.update(saved)
    opt["state"] = restored
    optimizer.load_state_dict(opt)
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    state["tensors"] = {k: v for k, v in tensors.items() if not k.startswith(("state.", "rng."))}
    return state
