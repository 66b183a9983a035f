"""Attention over a padding-free row, one sequence at a time.

transformers masks a packed row (``data.prompts.pack``) with one block-diagonal causal mask over
the whole row, and SDPA with an explicit mask computes every query against every key: for a
micro-batch of 4 examples of ~160 tokens that is the attention of a 640-token sequence, about
eight times the work of four causal 160-token ones. On SmolLM2 that whole-row attention took a
fifth of a CPU training step (torch profiler, 4 packed math examples, LoRA, fp32).

While the training loss runs on a packed row, the model's attention function is swapped for one
that slices queries, keys and values at the sequence boundaries and calls the model's own kernel
on each slice: SDPA without a mask (its causal kernel, which also skips the upper triangle), the
eager kernel with the slice's diagonal block of the mask. A sequence attends to exactly the keys
the block-diagonal mask lets it see, so the result is the same computation, batched differently.
Layers that extend their keys (a prefix, a soft prompt's keys and values: ``methods.prefix``)
keep the whole-row path, whose masks they already build.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from layerpeft.methods.prefix import extends_attention
from layerpeft.peft_model import packed_segments

#: The sequence boundaries of the packed row being trained on, while ``attend_by_sequence`` holds.
_spans: list[tuple[int, int]] | None = None


def sequence_spans(position_ids: torch.Tensor | None) -> list[tuple[int, int]] | None:
    """(start, end) of each sequence of a single packed row (``packed_segments``' rule: positions
    restart at each), or None when the input is not one row of several sequences."""
    segments = packed_segments(position_ids)
    if segments is None or segments.shape[0] != 1:
        return None
    ends = torch.bincount(segments[0]).cumsum(0).tolist()
    return list(zip([0, *ends[:-1]], ends))


def _kernel(name: str) -> str | None:
    """``sdpa`` or ``eager`` when the attention implementation ``name`` is that kernel or
    layerpeft's prefix wrapper around it (``layerpeft_sdpa_llama``); None for any other."""
    parts = name.split("_")
    if name == "sdpa":
        return name
    return parts[1] if parts[0] == "layerpeft" and len(parts) > 2 and parts[1] in ("sdpa", "eager") else None


def _by_sequence(base_name: str) -> str:
    """Register (once) the attention function that splits packed rows around ``base_name``'s."""
    name = f"layerpeft_bysequence_{base_name}"
    if name in ALL_ATTENTION_FUNCTIONS:
        return name
    base_fn = ALL_ATTENTION_FUNCTIONS[base_name]
    causal_kernel = _kernel(base_name) == "sdpa"

    def attention(module, query, key, value, attention_mask, **kwargs):
        spans = _spans
        if (spans is None or extends_attention(module) or query.shape[2] != spans[-1][1]
                or key.shape[2] != query.shape[2]):
            return base_fn(module, query, key, value, attention_mask, **kwargs)
        outs = []
        for start, end in spans:
            part = slice(start, end)
            mask = None if causal_kernel or attention_mask is None else attention_mask[..., part, part]
            outs.append(base_fn(module, query[:, :, part], key[:, :, part], value[:, :, part], mask, **kwargs)[0])
        return torch.cat(outs, dim=1), None

    AttentionInterface.register(name, attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base_name])
    return name


@contextmanager
def attend_by_sequence(model, position_ids: torch.Tensor | None) -> Iterator[None]:
    """Within the block, ``model`` attends to each sequence of the packed row ``position_ids``
    separately; a no-op for padded batches and for other attention implementations than sdpa
    and the prefix wrapper (``methods.prefix``) around sdpa or eager."""
    global _spans
    config = model.config
    base = config._attn_implementation
    spans = sequence_spans(position_ids)
    if spans is None or _kernel(base) is None or _spans is not None:
        yield
        return
    config._attn_implementation, _spans = _by_sequence(base), spans
    try:
        yield
    finally:
        config._attn_implementation, _spans = base, None
