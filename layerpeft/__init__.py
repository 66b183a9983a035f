"""layerpeft: layer-aware parameter-efficient fine-tuning experiments."""

from layerpeft.peft_model import apply_plan, get_adapters, load_adapter, save_adapter
from layerpeft.plan import LayerPlan, PlanError, build_plan
from layerpeft.rundir import load_run

__all__ = [
    "LayerPlan",
    "PlanError",
    "apply_plan",
    "build_plan",
    "get_adapters",
    "load_adapter",
    "load_run",
    "save_adapter",
]
