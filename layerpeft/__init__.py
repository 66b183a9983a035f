"""layerpeft: layer-aware parameter-efficient fine-tuning experiments.

The public names below are imported when first used (PEP 562), so that ``layerpeft report``,
``plan`` and ``--help`` do not pay for importing torch and transformers' model code.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "LayerPlan": "layerpeft.plan",
    "PlanError": "layerpeft.plan",
    "build_plan": "layerpeft.plan",
    "apply_plan": "layerpeft.peft_model",
    "get_adapters": "layerpeft.peft_model",
    "load_adapter": "layerpeft.peft_model",
    "save_adapter": "layerpeft.peft_model",
    "load_run": "layerpeft.rundir",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'layerpeft' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
