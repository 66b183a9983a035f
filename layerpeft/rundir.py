"""The run directory: what a finished run leaves behind, and loading it back.

    config.yaml        resolved config of the run
    plan.json          the layer plan with per-layer parameter counts
    metrics.json       {"datasets": {name: {n, correct, accuracy}}, "average", "train": {...}, ...}
    predictions.jsonl  one generated answer per evaluated example
    adapter/           adapter.safetensors (+ peft/ for plain LoRA: PeftModel.from_pretrained)
    ist.json           IST only: importance trajectory and per-step layer selections
    checkpoints/       step_<n>/ for train.resume=true
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from layerpeft.models.loading import load_model
from layerpeft.peft_model import load_adapter

CONFIG, PLAN, METRICS, PREDICTIONS, ADAPTER_DIR = "config.yaml", "plan.json", "metrics.json", "predictions.jsonl", "adapter"
IST_FILE = "ist.json"


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
    cfg = OmegaConf.load(run_dir / CONFIG)
    model, tok = load_model(cfg.model, device=device)
    if (run_dir / ADAPTER_DIR).is_dir():
        load_adapter(model, run_dir / ADAPTER_DIR)
    return model.eval(), tok
