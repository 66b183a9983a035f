"""Architecture-neutral addressing of transformer parts.

Methods never name a model's modules directly; they ask for a *role* (``q``, ``down``,
``attention`` …) and this module maps it to the family's attribute path. Adding a family
(Mistral, Qwen2, …) is one entry in ``FAMILIES`` plus its ``model_type`` in ``MODEL_TYPES``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from layerpeft.errors import UserError

ROLES = ("attention", "attn_input_norm", "ffn_input_norm", "q", "k", "v", "o", "mlp", "up", "gate", "down")


@dataclass(frozen=True)
class Family:
    """Paths of one architecture family: ``layers`` from the CausalLM, the rest from a layer."""

    name: str
    layers: str
    paths: dict[str, str | None]

    def path(self, role: str) -> str:
        if role not in ROLES:
            raise ValueError(f"unknown module role {role!r}; roles are {', '.join(ROLES)}")
        p = self.paths.get(role)
        if p is None:
            raise ValueError(f"model family {self.name!r} has no {role!r} module")
        return p

    def has(self, role: str) -> bool:
        return self.paths.get(role) is not None


_LLAMA_PATHS = {
    "attention": "self_attn",
    "attn_input_norm": "input_layernorm",
    "ffn_input_norm": "post_attention_layernorm",
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "mlp": "mlp",
    "up": "mlp.up_proj",
    "gate": "mlp.gate_proj",
    "down": "mlp.down_proj",
}

FAMILIES: dict[str, Family] = {
    "llama": Family("llama", "model.layers", _LLAMA_PATHS),
    "gptj": Family(
        "gptj",
        "transformer.h",
        {
            "attention": "attn",
            "attn_input_norm": "ln_1",
            "ffn_input_norm": None,  # GPT-J's attention and FFN share ln_1
            "q": "attn.q_proj",
            "k": "attn.k_proj",
            "v": "attn.v_proj",
            "o": "attn.out_proj",
            "mlp": "mlp",
            "up": "mlp.fc_in",
            "gate": None,
            "down": "mlp.fc_out",
        },
    ),
}

# transformers ``model_type`` → family. LLaMA-like decoders share the LLaMA layout.
MODEL_TYPES = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "gemma": "llama",
    "gemma2": "llama",
    "gptj": "gptj",
}


class UnsupportedModel(UserError):
    """A model whose layers do not have the module roles the methods address."""


def family_of(config) -> Family:
    """The role map of ``config``'s architecture: by its ``model_type`` when known, else the family
    whose every module path exists in the model's first layer (checked on the meta device); an
    architecture matching none is refused, naming the roles it lacks."""
    model_type = getattr(config, "model_type", None)
    if model_type in MODEL_TYPES:
        return FAMILIES[MODEL_TYPES[model_type]]
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception as e:  # not a causal LM transformers can build
        raise UnsupportedModel(f"model_type {model_type!r}: not a causal LM transformers can build ({e})") from None
    best, best_missing = None, None
    for family in FAMILIES.values():
        try:
            layer = model.get_submodule(family.layers)[0]
        except (AttributeError, IndexError, TypeError):  # not even its layer list: the worst match
            missing = [f"layers ({family.layers})", *(r for r, path in family.paths.items() if path is not None)]
        else:
            missing = [r for r, path in family.paths.items() if path is not None and not _has(layer, path)]
        if not missing:
            return family
        if best_missing is None or len(missing) < len(best_missing):
            best, best_missing = family, missing
    raise UnsupportedModel(
        f"model_type {model_type!r} is not supported: its layers lack the {best.name}-family module roles "
        f"{', '.join(best_missing)}; supported: {', '.join(sorted(MODEL_TYPES))} and architectures with their layout"
    )


def _has(module, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False


@dataclass(frozen=True)
class Dims:
    """The sizes PEFT modules are built from, read off a transformers config."""

    num_layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int

    @property
    def q_out(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_out(self) -> int:
        return self.kv_heads * self.head_dim

    @classmethod
    def from_config(cls, config) -> "Dims":
        hidden = config.hidden_size
        heads = config.num_attention_heads
        ffn = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
        return cls(
            num_layers=config.num_hidden_layers,
            hidden=hidden,
            ffn=ffn,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or hidden // heads,
        )


def decoder_layers(model: nn.Module, family: Family) -> nn.ModuleList:
    return model.get_submodule(family.layers)


def linear_shape(dims: Dims, role: str) -> tuple[int, int]:
    """(in_features, out_features) of a role's projection, from the config alone."""
    shapes = {
        "q": (dims.hidden, dims.q_out),
        "k": (dims.hidden, dims.kv_out),
        "v": (dims.hidden, dims.kv_out),
        "o": (dims.q_out, dims.hidden),
        "up": (dims.hidden, dims.ffn),
        "gate": (dims.hidden, dims.ffn),
        "down": (dims.ffn, dims.hidden),
    }
    if role not in shapes:
        raise ValueError(f"role {role!r} is not a linear projection; use one of {', '.join(shapes)}")
    return shapes[role]
