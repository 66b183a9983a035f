"""``layerpeft plan``: show where a method's modules go and what they cost, without weights."""

from __future__ import annotations

import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

from layerpeft.models.loading import arch_config, meta_model
from layerpeft.models.roles import Dims, family_of
from layerpeft.peft_model import apply_plan
from layerpeft.plan import LayerPlan, build_plan


def plan_for(cfg: DictConfig) -> LayerPlan:
    """Validate ``cfg.method`` (+ ``cfg.layer_ratio``) against ``cfg.model``'s depth."""
    config = arch_config(cfg.model)
    return build_plan(
        cfg.method,
        Dims.from_config(config).num_layers,
        family=family_of(config).name,
        ratio=cfg.get("layer_ratio"),
    )


def plan_summary(cfg: DictConfig) -> dict[str, Any]:
    """Plan + per-layer and total parameter counts, computed on the meta device."""
    plan = plan_for(cfg)
    model = meta_model(cfg.model)
    adapters = apply_plan(model, plan)
    trainable = adapters.num_params()
    total = sum(p.numel() for p in model.parameters())
    return {
        "model": cfg.model.name,
        "method": plan.method,
        "segments": plan.to_dict()["segments"],
        "trainable_params": trainable,
        "shared_params": adapters.shared_params(),
        "total_params": total,
        "trainable_pct": 100.0 * trainable / total,
        "layers": plan.layers,
        "layer_params": [adapters.layer_params(i) for i in range(plan.num_layers)],
        "options": OmegaConf.to_container(OmegaConf.create(plan.options)),
        "notes": param_notes(plan, Dims.from_config(model.config)),
    }


def param_notes(plan: LayerPlan, dims: Dims) -> list[str]:
    """Kind-specific remarks on how parameters are counted (e.g. PARA's bias)."""
    from layerpeft.methods import MODULE_KINDS

    notes = []
    for kind in plan.kinds:
        note = getattr(MODULE_KINDS[kind], "param_note", None)
        if note is not None:
            layers = sum(s.size for s in plan.segments if s.module == kind)
            notes.append(note(dims, plan.options[kind], layers))
    return notes


def format_table(summary: dict[str, Any]) -> str:
    rows = [f"{'layer':>5}  {'modules':<24} {'trainable':>12}"]
    for i, (mods, n) in enumerate(zip(summary["layers"], summary["layer_params"])):
        rows.append(f"{i:>5}  {', '.join(mods) or '-':<24} {n:>12,}")
    if summary["shared_params"]:
        rows.append(f"{'tied':>5}  {'shared by the layers':<24} {summary['shared_params']:>12,}")
    outside = summary["trainable_params"] - summary["shared_params"] - sum(summary["layer_params"])
    if outside:  # full fine-tuning's embeddings, final norm and LM head
        rows.append(f"{'model':>5}  {'outside the layers':<24} {outside:>12,}")
    rows.extend(summary["notes"])
    rows.append(
        f"model {summary['model']}, method {summary['method']}: "
        f"{summary['trainable_params']:,} trainable of {summary['total_params']:,} "
        f"({summary['trainable_pct']:.4f} %)"
    )
    return "\n".join(rows)


def run(cfg: DictConfig) -> None:
    summary = plan_summary(cfg)
    print(format_table(summary))
    print(json.dumps(summary))
