"""Prefix tuning, optionally gated (HLPT's top module).

The prefix is learned directly in each layer's key/value space *after* rotary embedding, so
it carries no position and the real tokens keep theirs. It is prepended inside the attention
function — registered through transformers' ``AttentionInterface``, which hands us each layer's
post-rotary, post-cache keys and values — and never enters the KV cache, so cached decoding
sees exactly what teacher forcing sees.

With a prefix, keys outnumber queries, so the attention mask is always explicit: prefix
columns visible to every query, the causal part aligned bottom-right (SDPA's ``is_causal``
would align it top-left). The module's ``response_scale`` s enters as ``log s`` on the prefix
columns (the prefix's unnormalised attention weight times s); s = 0 removes the prefix.

HLPT's gate ``g_p = sigmoid(w·x̄ + b)`` is computed from the layer's attention input pooled
over the *prompt*, causally: a query inside the prompt pools the prompt up to itself (a running
mean), a query after it pools the whole prompt. So the response and every decoded token use one
gate per sequence (the one generation's prefill ends with, valid for the whole cached decode),
and no prompt token's output depends on later tokens. With one gate per query the prefix keys
and values differ per query, which one SDPA call cannot express: gated layers compute their
attention explicitly (``gated_attention``); ungated prefixes keep the model's own kernel.
"""

from __future__ import annotations

import math
import sys
from typing import Callable

import torch
from torch import nn
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from layerpeft.methods.base import AdapterModule, check_positive_int

_ATTR = "_layerpeft_prefix"
_PREFIX_IMPLS = ("sdpa", "eager")


class ExtendsAttention:
    """A module that adds key/value columns to its layer's attention (``attach_attention``):
    ``extend`` widens keys, values and mask, and ``attend`` runs the model's kernel on them."""

    def extend(self, query, key, value, mask):
        raise NotImplementedError

    def attend(self, base_fn: Callable, module, query, key, value, mask, **kwargs):
        return base_fn(module, query, *self.extend(query, key, value, mask), **kwargs)


class Prefix(ExtendsAttention, AdapterModule):
    kind = "prefix"
    defaults = {
        "num_tokens": 30,
        "gate": False,
        "init_std": 1.0,
        "reparam": False,  # Li & Liang's MLP reparametrisation, folded away by fold()
        "reparam_hidden": 512,
    }
    zero_init = False
    layer_local = False
    extends_attention = True  # needs install_prefix_attention

    @classmethod
    def check_options(cls, opts):
        check_positive_int(cls.kind, opts, "num_tokens", "reparam_hidden")

    def __init__(self, layer_idx, dims, family, ctx, **options):
        super().__init__(layer_idx, dims, family, ctx, **options)
        n, std = options["num_tokens"], float(options["init_std"])
        shape = (dims.kv_heads, n, dims.head_dim)
        if options["reparam"]:
            self.embedding = nn.Parameter(torch.randn(n, dims.hidden) * std)
            self.mlp = nn.Sequential(
                nn.Linear(dims.hidden, options["reparam_hidden"]),
                nn.Tanh(),
                nn.Linear(options["reparam_hidden"], 2 * dims.kv_out),
            )
        else:
            self.key = nn.Parameter(torch.randn(shape) * std)
            self.value = nn.Parameter(torch.randn(shape) * std)
        self.gate = nn.Linear(dims.hidden, 1) if options["gate"] else None
        self._seq_gate: torch.Tensor | None = None  # (B, 1): the whole prompt's, for decoding
        self._gates: torch.Tensor | None = None  # (B, T): this forward's, one per query

    def key_value(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The prefix keys and values, each (kv_heads, num_tokens, head_dim)."""
        if self.options["reparam"] and hasattr(self, "mlp"):
            kv = self.mlp(self.embedding)  # (n, 2 * kv_out)
            n = kv.shape[0]
            k, v = kv.view(n, 2, self.dims.kv_heads, self.dims.head_dim).unbind(1)
            return k.transpose(0, 1), v.transpose(0, 1)
        return self.key, self.value

    @torch.no_grad()
    def fold(self) -> None:
        """Replace the reparametrisation MLP by the prefix it produces (after training)."""
        if not (self.options["reparam"] and hasattr(self, "mlp")):
            return
        k, v = self.key_value()
        del self.mlp, self.embedding
        self.key, self.value = nn.Parameter(k.clone()), nn.Parameter(v.clone())
        self.options = {**self.options, "reparam": False}

    def merge_refusal(self) -> str | None:
        return "a prefix adds key/value columns to attention, not a weight"

    # --- gate -------------------------------------------------------------------------
    def _update_gate(self, _mod, args, kwargs):
        h = kwargs.get("hidden_states", args[0] if args else None)
        if self.ctx.decoding:
            if self._seq_gate is None or self._seq_gate.shape[0] != h.shape[0]:
                raise RuntimeError(
                    f"prefix gate of layer {self.layer_idx}: a cached decoding step without a "
                    "matching prefill (batch changed?)"
                )
            self._gates = self._seq_gate.expand(-1, h.shape[1])
            return None
        pooled = self.ctx.prompt_running_mean(h.to(self.gate.weight.dtype))
        gates = torch.sigmoid(self.gate(pooled)).squeeze(-1)  # (B, T)
        last = self.ctx.last_prompt_index(*gates.shape, gates.device)
        self._gates = gates
        self._seq_gate = gates.gather(1, last[:, None])
        return None

    def select_sequences(self, index):
        if self._seq_gate is not None:
            self._seq_gate = self._seq_gate[index]

    def sequence_state(self):
        return self._seq_gate

    def set_sequence_state(self, state):
        self._seq_gate = state

    # --- attention --------------------------------------------------------------------
    def _expanded(self, key, value):
        batch = key.shape[0]
        pk, pv = self.key_value()
        return (pk.to(key.dtype).unsqueeze(0).expand(batch, -1, -1, -1),
                pv.to(value.dtype).unsqueeze(0).expand(batch, -1, -1, -1))

    def extend(self, query, key, value, mask):
        """Prepend the (ungated) prefix to ``key``/``value`` and widen ``mask`` to match."""
        pk, pv = self._expanded(key, value)
        return prepend_kv(query, key, value, mask, pk, pv, self.response_scale)

    def attend(self, base_fn: Callable, module, query, key, value, mask, **kwargs):
        """Ungated: the model's kernel over the widened keys. Gated: the explicit computation
        with one gate per query."""
        if self.gate is None:
            return super().attend(base_fn, module, query, key, value, mask, **kwargs)
        pk, pv = self._expanded(key, value)
        return gated_attention(query, key, value, mask, pk, pv, self._gates.to(query.dtype), self.response_scale,
                               scaling=kwargs.get("scaling"), dropout=kwargs.get("dropout", 0.0),
                               training=module.training)

    def attach(self, layer):
        attn = self.target(layer, "attention")
        handles = [attach_attention(self, attn)]
        if self.gate is not None:
            handles.append(attn.register_forward_pre_hook(self._update_gate, with_kwargs=True))
        return handles


def prepend_kv(query, key, value, mask, pk, pv, scale: float):
    """Keys/values with ``pk``/``pv`` (B, kv_heads, n, head_dim) in front, and the mask widened:
    the new columns are visible to every query, weighted by ``scale`` (as a ``log`` bias)."""
    q_len, kv_len, n = query.shape[2], key.shape[2], pk.shape[2]
    key = torch.cat([pk, key], dim=2)
    value = torch.cat([pv, value], dim=2)
    if mask is None:
        rows = torch.arange(q_len, device=key.device)[:, None] + (kv_len - q_len)
        mask = (torch.arange(kv_len, device=key.device)[None, :] <= rows)[None, None]
    if mask.dtype == torch.bool and scale == 1.0:
        cols = torch.ones(*mask.shape[:2], q_len, n, dtype=torch.bool, device=mask.device)
    else:
        if mask.dtype == torch.bool:
            neg = torch.finfo(query.dtype).min
            mask = torch.zeros(mask.shape, dtype=query.dtype, device=mask.device).masked_fill(~mask, neg)
        cols = torch.full((*mask.shape[:2], q_len, n), math.log(scale), dtype=mask.dtype, device=mask.device)
    return key, value, torch.cat([cols, mask.expand(*mask.shape[:2], q_len, kv_len)], dim=-1)


def _causal_part(mask, q_len: int, kv_len: int, dtype, device) -> torch.Tensor:
    """The token columns' additive mask (…, q_len, kv_len) from a bool, float or absent mask
    (absent = causal, aligned bottom-right as with a KV cache)."""
    neg = torch.finfo(dtype).min
    if mask is None:
        rows = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
        mask = (torch.arange(kv_len, device=device)[None, :] <= rows)[None, None]
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, neg)
    return mask[..., :kv_len].to(dtype)


def gated_attention(query, key, value, mask, pk, pv, gates, scale: float, scaling: float | None = None,
                    dropout: float = 0.0, training: bool = False):
    """Attention over ``[prefix; tokens]`` where query t sees the prefix keys and values times its
    own gate ``gates[:, t]`` (B, T): prefix logits ``g_t q·P_k`` and values ``g_t P_v``. ``scale``
    (the response scale) weights the prefix columns as ``log scale`` does in ``prepend_kv``.
    Returns (B, T, heads, head_dim) like transformers' attention functions."""
    groups = query.shape[1] // key.shape[1]
    n = pk.shape[2]
    keys = repeat_kv(torch.cat([pk, key], dim=2), groups)
    values = repeat_kv(torch.cat([pv, value], dim=2), groups)
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    logits = (query @ keys.transpose(-1, -2)) * scaling  # (B, H, T, n + S)
    g = gates[:, None, :, None]
    q_len, kv_len = query.shape[2], key.shape[2]
    prefix = logits[..., :n] * g + math.log(scale)
    tokens = logits[..., n:] + _causal_part(mask, q_len, kv_len, logits.dtype, logits.device)
    probs = torch.softmax(torch.cat([prefix, tokens], dim=-1), dim=-1, dtype=torch.float32).to(query.dtype)
    probs = torch.nn.functional.dropout(probs, p=dropout, training=training)
    out = (probs[..., :n] * g) @ values[:, :, :n] + probs[..., n:] @ values[:, :, n:]
    return out.transpose(1, 2).contiguous(), None


def extends_attention(attn: nn.Module) -> bool:
    """Whether a module is attached to ``attn``'s attention (``attach_attention``)."""
    return attn.__dict__.get(_ATTR) is not None


def attach_attention(module: AdapterModule, attn: nn.Module) -> "_DictEntryHandle":
    """Make ``module.extend`` part of ``attn``'s attention (see ``install_prefix_attention``)."""
    attn.__dict__[_ATTR] = module
    return _DictEntryHandle(attn.__dict__, _ATTR)


class _DictEntryHandle:
    """Undo an ``attach`` that is not a torch hook, with the same ``remove()`` interface."""

    def __init__(self, d: dict, key: str):
        self.d, self.key = d, key

    def remove(self) -> None:
        self.d.pop(self.key, None)


def install_prefix_attention(model: nn.Module) -> None:
    """Route the model's attention through a function that knows about prefixes.

    The wrapper delegates to the model's own implementation (sdpa or eager) and only
    changes layers that carry a module attached by ``attach_attention`` (a prefix, a soft
    prompt's keys and values), through that module's ``attend``; the matching mask function is
    registered too.
    """
    impl = model.config._attn_implementation
    if impl.startswith("layerpeft_"):
        return
    if impl not in _PREFIX_IMPLS:
        raise ValueError(
            f"prefix modules need attn_implementation sdpa or eager, the model uses {impl!r}"
        )
    if impl == "eager":
        layer_cls = next(m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "scaling"))
        base_fn = sys.modules[type(layer_cls).__module__].eager_attention_forward
    else:
        base_fn = ALL_ATTENTION_FUNCTIONS[impl]

    def attention(module, query, key, value, attention_mask, **kwargs):
        extra = module.__dict__.get(_ATTR)
        if extra is not None and extra.response_scale != 0.0:
            return extra.attend(base_fn, module, query, key, value, attention_mask, **kwargs)
        return base_fn(module, query, key, value, attention_mask, **kwargs)

    name = f"layerpeft_{impl}_{model.config.model_type}"
    AttentionInterface.register(name, attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS[impl])
    model.config._attn_implementation = name
