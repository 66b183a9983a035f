"""Prompt tuning (Lester et al. 2021): trained soft tokens in front of the input.

Inserting tokens at the input would lengthen every sequence and shift every position, which
breaks the KV cache bookkeeping of ``generate``. Instead the soft prompt is run once per
forward through the (frozen, possibly adapted) decoder on its own, at positions −n … −1, and
each layer's post-rotary keys and values of those tokens are prepended to that layer's
attention — the same mechanism as prefix tuning. For a model with rotary positions this is
exactly prompt tuning: the soft tokens only attend to each other (causally), real tokens see
them at the same relative distances as if they stood in front of the input, and the soft
tokens' states never depend on the input. Models whose positions are a table lookup (GPT-J)
cannot take negative positions and are refused.

The soft prompt is one tensor (``AdapterSet.shared["prompt"]``); the per-layer modules only
carry its keys/values into attention, so a plan may restrict which layers see the prompt.
At generation's prefill the pass runs once and cached decoding steps reuse its keys/values.
"""

from __future__ import annotations

import torch
from torch import nn

from layerpeft.methods.base import AdapterModule, check_choice, check_positive_int
from layerpeft.methods.prefix import ExtendsAttention, attach_attention, prepend_kv
from layerpeft.models.roles import Dims


class SoftPrompt(nn.Module):
    """The trained soft tokens and the model-level pass that turns them into keys/values."""

    def __init__(self, dims: Dims, options: dict):
        super().__init__()
        self.options = options
        self.embedding = nn.Parameter(torch.randn(options["num_tokens"], dims.hidden) * 0.02)
        self.capturing = False

    @torch.no_grad()
    def _init_from_vocabulary(self, embed: nn.Embedding) -> None:
        """Lester et al.'s best initialisation: embeddings of tokens drawn from the vocabulary."""
        gen = torch.Generator().manual_seed(int(self.options["seed"]))
        rows = torch.randint(0, embed.weight.shape[0], (self.embedding.shape[0],), generator=gen)
        self.embedding.copy_(embed.weight[rows.to(embed.weight.device)].float())

    def attach_model(self, model: nn.Module, ctx) -> list:
        from layerpeft.plan import PlanError

        decoder = model.get_decoder()
        rotary = getattr(decoder, "rotary_emb", None)
        if rotary is None or hasattr(rotary, "embed_positions"):  # GPT-J indexes a sin/cos table
            raise PlanError(
                f"prompt tuning needs rotary positions computed from position ids (LLaMA-like models); "
                f"this {model.config.model_type} model looks its positions up in a table, which cannot "
                "place the soft prompt in front of the input"
            )
        if self.options["init"] == "vocab":
            self._init_from_vocabulary(model.get_input_embeddings())

        def hook(_mod, args, kwargs):
            if not ctx.decoding:
                self.run_pass(decoder, ctx)
            return args, kwargs

        return [model.register_forward_pre_hook(hook, with_kwargs=True)]

    def run_pass(self, decoder: nn.Module, ctx) -> None:
        """Forward the soft tokens alone; the layer modules capture their keys/values."""
        n = self.embedding.shape[0]
        embed_dtype = decoder.get_input_embeddings().weight.dtype
        positions = torch.arange(-n, 0, device=self.embedding.device)[None]
        saved, ctx.prompt_mask = ctx.prompt_mask, None
        self.capturing = True
        try:
            decoder(inputs_embeds=self.embedding[None].to(embed_dtype), position_ids=positions, use_cache=False)
        finally:
            self.capturing = False
            ctx.prompt_mask = saved


class PromptTuning(ExtendsAttention, AdapterModule):
    kind = "prompt"
    defaults = {"num_tokens": 20, "init": "vocab", "seed": 42}
    zero_init = False
    layer_local = False  # one input-level prompt: IST cannot select it per layer
    extends_attention = True

    @classmethod
    def check_options(cls, opts):
        check_positive_int(cls.kind, opts, "num_tokens")
        check_choice(cls.kind, opts, "init", ("vocab", "random"))

    @classmethod
    def make_shared(cls, dims: Dims, options: dict) -> nn.Module:
        return SoftPrompt(dims, options)

    def __init__(self, layer_idx, dims, family, ctx, shared=None, **options):
        super().__init__(layer_idx, dims, family, ctx, **options)
        object.__setattr__(self, "soft", shared)  # owned by AdapterSet.shared
        self._kv: tuple[torch.Tensor, torch.Tensor] | None = None

    def merge_refusal(self) -> str | None:
        return "a soft prompt is extra input, not a weight"

    def extend(self, query, key, value, mask):
        if self.soft.capturing:
            self._kv = (key, value)
            return key, value, mask
        if self._kv is None:
            raise RuntimeError(f"prompt tuning, layer {self.layer_idx}: no soft-prompt keys/values (no prefill?)")
        batch = key.shape[0]
        pk, pv = (t.to(key.dtype).expand(batch, -1, -1, -1) for t in self._kv)
        return prepend_kv(query, key, value, mask, pk, pv, self.response_scale)

    def attach(self, layer):
        return [attach_attention(self, self.target(layer, "attention"))]
