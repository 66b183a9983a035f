"""Before a run creates anything: can this machine run it at all?

The headline command (``layerpeft train method=hlpt model=llama7b``) on a laptop without a GPU or
network would otherwise download nothing, fail a minute later in a long traceback, and leave a
W&B run and a half-empty run directory behind. Each problem found here is one line:

- the base weights are neither a local directory nor in the Hugging Face cache, and the hub
  cannot be reached;
- the model, at its precision, with the optimizer state of what trains, does not fit in the
  device's memory (an estimate from the architecture, built on the meta device);
- a model of billions of parameters would train on a CPU (refused unless ``train.allow_cpu``).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import torch

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
#: Above this many parameters a CPU run is refused unless train.allow_cpu=true.
CPU_LIMIT = 2_000_000_000
#: Activations, buffers and fragmentation on top of weights and optimizer state (a rough factor).
OVERHEAD = 1.2


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def weights_problem(model_cfg: Any) -> str | None:
    """Why the base weights cannot be had here (None when they can)."""
    source = model_cfg.get("source")
    if source not in ("hub", "hf"):
        return None
    where = model_cfg.get("hub_id") if source == "hub" else str(model_cfg.get("name_or_path"))
    local = Path(where).expanduser()
    if local.is_dir():
        if any((local / f).is_file() for f in WEIGHT_FILES):
            return None
        return f"model {model_cfg.get('name')}: {local} holds no weights ({' or '.join(WEIGHT_FILES[:3])})"
    from huggingface_hub import try_to_load_from_cache

    revision = model_cfg.get("revision")
    if any(isinstance(try_to_load_from_cache(where, f, revision=revision), str) for f in WEIGHT_FILES):
        return None
    if _hub_reachable():
        return None
    return (f"model {model_cfg.get('name')}: the weights of {where} are not in the Hugging Face cache and the hub "
            "cannot be reached; download them where there is internet (huggingface-cli download "
            f"{where}) or point model=hf model.name_or_path= at a local copy")


def _available_bytes(device: torch.device) -> tuple[int | None, str]:
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return total, f"the GPU has {total / 2**30:.1f} GiB"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                kb = int(line.split()[1])
                return kb * 1024, f"this machine has {kb / 2**20:.1f} GiB of memory available"
    except OSError:
        pass
    return None, ""


def memory_problem(model_cfg: Any, total: int, trainable: int, dtype: torch.dtype, device: torch.device,
                   training: bool) -> str | None:
    """Whether the model, its trained parameters' optimizer state and an overhead fit."""
    need = total * torch.finfo(dtype).bits // 8
    if training:
        need += trainable * (4 + 4 + 8)  # fp32 weight, gradient, AdamW's two moments
    need = int(need * OVERHEAD)
    have, what = _available_bytes(device)
    if have is None or need <= have:
        return None
    return (f"model {model_cfg.get('name')}: about {need / 2**30:.1f} GiB are needed at "
            f"{str(dtype).removeprefix('torch.')} ({total / 1e9:.2f}B parameters{', the optimizer state' if training else ''}); "
            f"{what}")


def device_problem(model_cfg: Any, total: int, device: torch.device, allow_cpu: bool) -> str | None:
    if device.type != "cpu" or total <= CPU_LIMIT or allow_cpu:
        return None
    return (f"model {model_cfg.get('name')} ({total / 1e9:.1f}B parameters) would train on the CPU (no GPU here), "
            "which takes days; run it on a GPU, or pass train.allow_cpu=true to train on the CPU anyway")


def preflight(model_cfg: Any, plan, dtype: torch.dtype, device: torch.device, training: bool,
              allow_cpu: bool = False) -> list[str]:
    """Every problem that would stop the run on this machine, one line each (none: go)."""
    from layerpeft.models.loading import meta_model
    from layerpeft.peft_model import apply_plan

    model = meta_model(model_cfg)
    total = sum(p.numel() for p in model.parameters())
    trainable = apply_plan(model, plan).num_params() if plan is not None else 0
    problems = [weights_problem(model_cfg), memory_problem(model_cfg, total, trainable, dtype, device, training)]
    if training:
        problems.append(device_problem(model_cfg, total, device, allow_cpu))
    return [p for p in problems if p]
