"""Training checkpoints without pickles: adapter + optimizer tensors in safetensors, the rest JSON.

``checkpoints/step_<n>/`` holds ``adapter.safetensors`` (the plan in its metadata),
``optimizer.safetensors`` (AdamW moments per parameter index, RNG states) and ``state.json``
(step, loss history, param-group hyper-parameters). A checkpoint is written to a temporary
directory and renamed, so a run killed mid-write never leaves a half checkpoint behind.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from layerpeft.peft_model import ADAPTER_FILE, get_adapters, save_adapter

OPTIM_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = [p for p in checkpoint_dir(run_dir).glob("step_*") if (p / STATE_FILE).is_file()]
    return max(done, key=lambda p: int(p.name.split("_")[1])) if done else None


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
    (tmp / STATE_FILE).write_text(json.dumps({**state, "param_groups": groups}))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def load_checkpoint(path: Path, model, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore adapter weights, optimizer moments and RNG; return the saved training state
    (with the checkpoint's other tensors, e.g. IST's, under ``"tensors"``)."""
    from safetensors import safe_open

    adapters = get_adapters(model)
    with safe_open(str(path / ADAPTER_FILE), framework="pt") as f:
        adapters.load_adapter_state({k: f.get_tensor(k) for k in f.keys()})
    tensors = load_file(str(path / OPTIM_FILE))
    state = json.loads((path / STATE_FILE).read_text())
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
