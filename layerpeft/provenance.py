"""Where a number came from: code version, library versions, machine and base weights.

Every run records this in ``metrics.json`` (``provenance``, and one entry per process in
``segments``, since a resumed run may finish on another machine), because the same command
gives different numbers on different machines and precisions. Also the one place that says
whether this CPU computes bf16 natively, which decides ``train.precision=auto``.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]


@lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """The git commit of this checkout and whether tracked files differ from it (the package
    version when layerpeft is not run from a git checkout)."""
    def git(*args: str) -> str | None:
        try:
            p = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return p.stdout.strip() if p.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "version": _version("layerpeft")}
    return {"commit": commit, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    return {"python": platform.python_version(), **{p: _version(p) for p in ("torch", "transformers", "peft")}}


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic in hardware (AVX512-BF16 or AMX), where bf16
    matrix products run several times faster than fp32; without it they are emulated and slower."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # an older torch: read the flags
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def device_name(device: torch.device) -> str:
    """The GPU's name (e.g. 'NVIDIA H200') or 'cpu': what metrics record as where a run ran."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def machine(device: torch.device) -> dict[str, Any]:
    return {"device": device_name(device), "cpu": cpu_model(), "cores": os.cpu_count(),
            "native_bf16": native_bf16(), "torch_threads": torch.get_num_threads(), "platform": sys.platform}


def base_weights(model_cfg: Any, dtype: torch.dtype) -> dict[str, Any]:
    """What the frozen base model was built from, and the precision it is held in."""
    source = model_cfg.get("source")
    out: dict[str, Any] = {"model": model_cfg.get("name"), "source": source,
                           "dtype": str(dtype).removeprefix("torch.")}
    if source == "gguf":
        file = model_cfg.get("gguf_file")
        quant = re.search(r"\.((?:I?Q\d\w*)|F16|BF16|F32)\.gguf$", file or "", re.IGNORECASE)
        out.update({"package": model_cfg.get("package"), "file": file,
                    "note": f"dequantised from the {quant.group(1) if quant else 'quantised'} GGUF weights"})
    elif source == "hub":
        out["id"] = model_cfg.get("hub_id")
    elif source == "hf":
        out.update({"id": model_cfg.get("name_or_path"), "revision": model_cfg.get("revision")})
    elif source == "random":
        out.update({"seed": model_cfg.get("seed") or 0, "note": "random weights in the model's architecture"})
    return out


class Segment:
    """One process's share of a run: what it did, when, where, with which code, for how long.
    ``metrics.json`` lists them (``segments``) and its ``wall_s`` is their sum: a run resumed
    after a kill counts each process up to its last checkpoint."""

    def __init__(self, device: torch.device):
        self.info = {"phases": [], "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     **code_version(), "machine": machine(device)}
        self._t0 = time.perf_counter()

    def did(self, phase: str) -> None:
        if phase not in self.info["phases"]:
            self.info["phases"].append(phase)

    def record(self) -> dict[str, Any]:
        return {**self.info, "phases": list(self.info["phases"]), "seconds": time.perf_counter() - self._t0}


def provenance(model_cfg: Any, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    return {**code_version(), "versions": versions(), "machine": machine(device),
            "base_weights": base_weights(model_cfg, dtype)}
