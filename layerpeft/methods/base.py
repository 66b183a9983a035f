"""The contract every PEFT module of a layer plan follows.

A module is built for one layer from the model's ``Dims`` and its options, owns its
trainable parameters, and ``attach``es itself to that layer with forward hooks, so the base
model's modules and state-dict keys stay untouched (saving, reloading and merging the base
stay plain transformers operations). Every module scales its contribution by
``response_scale`` (1 = normal, 0 = exactly the base model): IST suppresses modules through
it and tests disable modules with it.

Modules that depend on the prompt (the prefix gate, PARA's vector generator) read the
shared ``ForwardContext``, causally: a prompt token uses the prompt up to itself, later tokens
the whole prompt. The whole prompt's state is kept per sequence across cached decoding steps,
and beam reordering never changes it (all beams of one prompt share it). A decoder that drops
finished sequences from its batch calls ``select_sequences`` so that this state follows the
rows that remain; one that adds sequences prefills them on their own and writes their state into
the rows they take (``sequence_state`` / ``set_sequence_state``).

Cross-layer structure (Tied-LoRA) fits the same contract: a tied tensor is created once at
the model level and each layer's module refers to it without registering it as its own
parameter, so it has one gradient, one optimizer state and one entry in the saved adapter.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from layerpeft.models.roles import Dims, Family


class ForwardContext:
    """Facts about the current forward pass, set by the model-level pre-hook.

    ``prompt_mask`` (B, T) marks the prompt tokens of this forward's inputs: the
    whole non-padded input at generation's prefill (and in a plain ``model(ids)`` call),
    the prompt part of a teacher-forced training sequence. ``segments`` (B, T) numbers the
    sequences packed into one row (padding-free training); None when each row is one
    sequence. ``decoding`` is true on cached steps after the prefill, when per-sequence state
    must be reused rather than recomputed.

    Everything read from the prompt is *causal*: a token inside the prompt sees only the
    prompt up to itself, a token after the prompt sees the whole prompt. So the loss on a
    prompt token (``train_on_inputs``) cannot read later tokens, while the response and every
    decoded token use what the full prompt gives (docs/design.md, "Causal prompt modules").
    """

    def __init__(self) -> None:
        self.prompt_mask: torch.Tensor | None = None
        self.segments: torch.Tensor | None = None
        self.decoding: bool = False

    def _mask(self, batch: int, length: int, device) -> torch.Tensor:
        mask = self.prompt_mask
        if mask is None:
            return torch.ones(batch, length, dtype=torch.bool, device=device)
        if mask.shape != (batch, length):
            raise ValueError(
                f"prompt_mask has shape {tuple(mask.shape)} but the hidden states are "
                f"{(batch, length)} (batch, tokens)"
            )
        return mask.to(device=device, dtype=torch.bool)

    def prompt_running_mean(self, h: torch.Tensor) -> torch.Tensor:
        """(B, T, D) → (B, T, D): at each position the mean of ``h`` over the prompt tokens of
        its sequence up to and including it. After the prompt it is the whole prompt's mean;
        before the first prompt token (left padding) it is 0."""
        w = self._mask(*h.shape[:2], h.device).to(h.dtype).unsqueeze(-1)
        total = segment_cumsum(h * w, self.segments)
        count = segment_cumsum(w, self.segments)
        return total / count.clamp_min(1.0)

    def prompt_source_index(self, batch: int, length: int, device) -> torch.Tensor:
        """(B, T): the position whose prompt state each token uses — itself inside the prompt,
        its sequence's last prompt token after the prompt (prompts open their sequences)."""
        pos = torch.arange(length, device=device).expand(batch, length)
        src = torch.where(self._mask(batch, length, device), pos, -1).cummax(dim=1).values
        return torch.where(src < 0, pos, src)

    def last_prompt_index(self, batch: int, length: int, device) -> torch.Tensor:
        """(B,): each row's last prompt token (left or right padding); what decoding reuses."""
        pos = torch.arange(length, device=device).expand(batch, length)
        return torch.where(self._mask(batch, length, device), pos, -1).max(dim=1).values.clamp_min(0)



def segment_cumsum(x: torch.Tensor, segments: torch.Tensor | None) -> torch.Tensor:
    """Cumulative sum along dim 1 of ``x`` (B, T, D), restarting where ``segments`` (B, T)
    changes value (the packed sequences of a padding-free row)."""
    total = x.cumsum(dim=1)
    if segments is None:
        return total
    batch, length = segments.shape
    pos = torch.arange(length, device=x.device).expand(batch, length)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    first = torch.where(starts, pos, 0).cummax(dim=1).values  # start of each token's sequence
    before = total.gather(1, (first - 1).clamp_min(0).unsqueeze(-1).expand_as(total))
    return total - torch.where((first > 0).unsqueeze(-1), before, torch.zeros_like(before))


class AdapterModule(nn.Module):
    """Base class of the PEFT modules a plan places in a layer."""

    kind: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = {}
    #: True when the module starts as the identity (e.g. LoRA's B = 0).
    zero_init: ClassVar[bool] = True
    #: Layer-based modules can be sparsely selected by IST; prefix-like ones cannot.
    layer_local: ClassVar[bool] = True

    def __init__(self, layer_idx: int, dims: Dims, family: Family, ctx: ForwardContext, **options):
        super().__init__()
        self.layer_idx = layer_idx
        self.dims = dims
        self.family = family
        # Shared, not owned: keep it out of nn.Module's registries.
        object.__setattr__(self, "ctx", ctx)
        self.options = options
        self.response_scale = 1.0

    @classmethod
    def check_options(cls, opts: dict[str, Any]) -> None:
        """Raise ``PlanError`` naming the bad value; called before any weights load."""

    def attach(self, layer: nn.Module) -> list[RemovableHandle]:
        raise NotImplementedError

    def merge_refusal(self) -> str | None:
        """Why this module cannot be folded into the base weights (None when ``merge`` can)."""
        return f"{self.kind} computes a function of its input that no base weight can hold"

    def select_sequences(self, index: torch.Tensor) -> None:
        """Keep only the batch rows ``index`` of the per-sequence state (none by default)."""

    def sequence_state(self):
        """The per-sequence state decoding reuses (None when the module keeps none)."""
        return None

    def set_sequence_state(self, state) -> None:
        """Replace the per-sequence state (what ``sequence_state`` returned, rows edited)."""

    def target(self, layer: nn.Module, role: str) -> nn.Module:
        return layer.get_submodule(self.family.path(role))

    def extra_repr(self) -> str:
        return f"layer={self.layer_idx}, " + ", ".join(f"{k}={v}" for k, v in self.options.items())


def check_positive_int(kind: str, opts: dict[str, Any], *names: str) -> None:
    from layerpeft.plan import PlanError

    for name in names:
        v = opts[name]
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise PlanError(f"option {kind}.{name}={v!r} must be a positive integer")


def check_choice(kind: str, opts: dict[str, Any], name: str, choices) -> None:
    from layerpeft.plan import PlanError

    if opts[name] not in choices:
        raise PlanError(f"option {kind}.{name}={opts[name]!r} must be one of {', '.join(map(str, choices))}")
