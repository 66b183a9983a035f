"""Taking a run's adapter to other tools: a merged Hugging Face model, or Hugging Face peft's layout.

- ``merged``: the base model with every module folded into its weights (LoRA family, DoRA,
  (IA)³, Tied-LoRA and VeRA, full fine-tuning), saved with ``save_pretrained`` beside its
  tokenizer: any transformers user loads it with ``AutoModelForCausalLM``. Plans with modules
  that are no weight — prefixes, gates, PARA's prompt-dependent vectors, soft prompts,
  bottleneck adapters — are refused with the reason.
- ``peft``: ``adapter_config.json`` + ``adapter_model.safetensors`` in peft's key names, for the
  modules peft has (ungated LoRA on any targets, DoRA, (IA)³), with the real base model
  (``hub_id``, the directory a ``model=hf`` run loaded, or the converted cache directory of a
  packaged model), so ``AutoPeftModelForCausalLM.from_pretrained(DIR)`` finds it. Tied-LoRA
  and VeRA tie one B across q, k and v with per-projection slices, which peft's VeRA (one shared
  matrix sliced from its start for every target) cannot express.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from layerpeft.errors import UserError
from layerpeft.methods.dora import DoRA
from layerpeft.methods.ia3 import IA3
from layerpeft.methods.lora import LoRA
from layerpeft.peft_model import ATTR, get_adapters
from layerpeft.rundir import ADAPTER_DIR, CONFIG, load_stored_config


def base_location(model_cfg) -> str | None:
    """Where the run's base model loads from: a hub id or a directory (None for built-in models)."""
    source = model_cfg.get("source")
    if source == "hub":
        return model_cfg.get("hub_id")
    if source == "hf":
        return str(model_cfg.get("name_or_path"))
    if source == "gguf":
        from layerpeft.models.loading import cache_dir

        return str(cache_dir(model_cfg))
    return None


def _load(run_dir: Path):
    from layerpeft.models.loading import load_model
    from layerpeft.peft_model import load_adapter

    if not (run_dir / CONFIG).is_file():
        raise UserError(f"{run_dir}: not a layerpeft run directory (no {CONFIG})")
    if not (run_dir / ADAPTER_DIR).is_dir():
        raise UserError(f"{run_dir}: no {ADAPTER_DIR}/ to export (the run did not finish training, or diverged)")
    cfg = load_stored_config(run_dir / CONFIG)
    model, tok = load_model(cfg.model)
    load_adapter(model, run_dir / ADAPTER_DIR)
    return cfg, model.eval(), tok


def export_merged(run_dir: Path, out: Path) -> Path:
    """Write the merged model directory; ``UserError`` with the reasons when the plan cannot merge."""
    cfg, model, tok = _load(Path(run_dir))
    adapters = get_adapters(model)
    refused = adapters.merge_refusals()
    if refused:
        raise UserError(f"{run_dir} cannot be merged into the base weights: {'; '.join(refused)} "
                        "(score it in layerpeft or through lm-evaluation-harness instead)")
    adapters.merge()
    adapters.detach_hooks()
    delattr(model, ATTR)
    for p in model.parameters():
        p.requires_grad_(False)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "layerpeft_export.json").write_text(json.dumps(
        {"run": str(run_dir), "base": base_location(cfg.model), "plan": adapters.plan.to_dict()}, indent=2))
    return out


def peft_refusal(model) -> str | None:
    """Why the run's modules have no peft equivalent (None when they do)."""
    modules = list(get_adapters(model).adapter_modules())
    if not modules:
        return "the plan has no modules"
    for m in modules:
        if not isinstance(m, (LoRA, IA3)):
            return f"peft has no {m.kind} module"
        if isinstance(m, LoRA) and m.gates is not None:
            return f"{m.kind} is gated, which peft's LoRA is not"
    kinds = {"dora" if isinstance(m, DoRA) else "ia3" if isinstance(m, IA3) else "lora" for m in modules}
    if len(kinds) > 1:
        return "one peft adapter holds one kind of module; this plan mixes " + ", ".join(sorted(kinds))
    settings = {tuple(m.options[k] for k in ("r", "alpha", "scaling")) for m in modules if isinstance(m, LoRA)}
    if len(settings) > 1:
        return "its LoRA modules have different ranks or scales, which one peft config cannot hold"
    return None


def export_peft(model, directory: Path, base: str | None) -> Path:
    """Write ``model``'s adapter in peft's layout (``peft_refusal`` must be None)."""
    reason = peft_refusal(model)
    if reason is not None:
        raise UserError(f"no peft export: {reason}")
    adapters = get_adapters(model)
    modules = list(adapters.adapter_modules())
    family = modules[0].family
    layers_path = family.layers
    tensors, targets, layer_ids = {}, set(), sorted({m.layer_idx for m in modules})
    for m in modules:
        for role in (m.targets if isinstance(m, LoRA) else m.scales):
            path = f"base_model.model.{layers_path}.{m.layer_idx}.{family.path(role)}"
            targets.add(path.rsplit(".", 1)[1])
            if isinstance(m, IA3):
                vec = m.scales[role].detach().cpu()
                tensors[f"{path}.ia3_l"] = (vec[None, :] if role == "down" else vec[:, None]).contiguous()
                continue
            tensors[f"{path}.lora_A.weight"] = m.A[role].detach().cpu().contiguous()
            tensors[f"{path}.lora_B.weight"] = m.B[role].detach().cpu().contiguous()
            if isinstance(m, DoRA):
                tensors[f"{path}.lora_magnitude_vector"] = m.magnitude[role].detach().cpu().contiguous()
    all_layers = len(layer_ids) == adapters.plan.num_layers
    common = {"task_type": "CAUSAL_LM", "base_model_name_or_path": base, "target_modules": sorted(targets),
              "layers_to_transform": None if all_layers else layer_ids,
              "layers_pattern": None if all_layers else layers_path.rsplit(".", 1)[1],
              "fan_in_fan_out": False, "inference_mode": True}
    if isinstance(modules[0], IA3):
        ffn = family.path("down").rsplit(".", 1)[1]
        config = {"peft_type": "IA3", **common, "feedforward_modules": [ffn] if ffn in targets else []}
    else:
        opts = modules[0].options
        config = {"peft_type": "LORA", **common, "r": opts["r"],
                  "lora_alpha": opts["alpha"] if opts["scaling"] == "rank" else opts["alpha"] * opts["r"],
                  "lora_dropout": opts["dropout"], "bias": "none", "use_dora": isinstance(modules[0], DoRA)}
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return directory


def export_run_peft(run_dir: Path, out: Path) -> Path:
    cfg, model, _ = _load(Path(run_dir))
    base = base_location(cfg.model)
    if base is None:
        raise UserError(f"{run_dir}: its base model ({cfg.model.name}) exists only inside layerpeft, so peft could "
                        "not load it; train with model=hf (a saved directory) or a hub model")
    return export_peft(model, out, base)
