"""Export plain LoRA adapters in Hugging Face peft's layout.

``adapter_config.json`` + ``adapter_model.safetensors`` with peft's key names, so
``PeftModel.from_pretrained(base, dir)`` loads a layerpeft LoRA run. Only ungated ``lora``
modules have a peft equivalent; other plans are saved in layerpeft's own format only.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from layerpeft.methods.lora import LoRA
from layerpeft.peft_model import get_adapters


def peft_compatible(model) -> bool:
    mods = list(get_adapters(model).adapter_modules())
    return bool(mods) and all(type(m) is LoRA and m.gates is None for m in mods)


def export_peft_lora(model, directory: Path, base_name: str) -> Path:
    adapters = get_adapters(model)
    if not peft_compatible(model):
        raise ValueError("only plans made of ungated `lora` modules have a peft equivalent")
    family = next(adapters.adapter_modules()).family
    layers_path = family.layers
    tensors, targets, layer_ids, opts = {}, set(), [], None
    for m in adapters.adapter_modules():
        opts = m.options
        layer_ids.append(m.layer_idx)
        for role in m.targets:
            path = f"{layers_path}.{m.layer_idx}.{family.path(role)}"
            targets.add(path.rsplit(".", 1)[1])
            tensors[f"base_model.model.{path}.lora_A.weight"] = m.A[role].detach().cpu().contiguous()
            tensors[f"base_model.model.{path}.lora_B.weight"] = m.B[role].detach().cpu().contiguous()
    all_layers = len(layer_ids) == adapters.plan.num_layers
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_name,
        "r": opts["r"],
        "lora_alpha": opts["alpha"] if opts["scaling"] == "rank" else opts["alpha"] * opts["r"],
        "lora_dropout": opts["dropout"],
        "target_modules": sorted(targets),
        "layers_to_transform": None if all_layers else sorted(layer_ids),
        "layers_pattern": None if all_layers else layers_path.rsplit(".", 1)[1],
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return directory
