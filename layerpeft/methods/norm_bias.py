"""LN tuning and BitFit: train the model's own normalisation gains / bias terms, as deltas.

Both keep the base weights frozen and learn an equivalent re-parametrisation instead, so they
follow the same contract as every other module (response scale, save only what trains):

- ``ln``: each norm's output ``y`` becomes ``y ⊙ l + δ`` (``l`` = 1, ``δ`` = 0 at the start; δ
  only where the norm has a bias). That is exactly tuning the gain (and bias): g' = g ⊙ l,
  b' = b ⊙ l + δ.
- ``bitfit``: every linear projection (and norm) that has a bias gets ``+ δ``, δ = 0 at the start,
  i.e. b' = b + δ. A model without bias terms (LLaMA) is refused with a clear error.

Which norms have a bias and which projections have one is read off the modules, so the
parameters are created when the module attaches to its layer.
"""

from __future__ import annotations

import torch
from torch import nn

from layerpeft.methods.base import AdapterModule

_NORMS = ("attn_input_norm", "ffn_input_norm")
_LINEARS = ("q", "k", "v", "o", "up", "gate", "down")


def _bias(module: nn.Module) -> torch.Tensor | None:
    b = getattr(module, "bias", None)
    return b if isinstance(b, torch.Tensor) else None


class LNTuning(AdapterModule):
    kind = "ln"

    def __init__(self, layer_idx, dims, family, ctx, **options):
        super().__init__(layer_idx, dims, family, ctx, **options)
        self.gains = nn.ParameterDict()
        self.shifts = nn.ParameterDict()

    def attach(self, layer):
        handles = []
        for role in _NORMS:
            if not self.family.has(role):
                continue
            norm = self.target(layer, role)
            weight = norm.weight
            self.gains[role] = nn.Parameter(torch.ones(weight.shape, device=weight.device))
            if _bias(norm) is not None:
                self.shifts[role] = nn.Parameter(torch.zeros(weight.shape, device=weight.device))

            def hook(_mod, _args, out, role=role):
                s = self.response_scale
                y = out * (1.0 + s * (self.gains[role] - 1.0)).to(out.dtype)
                if role in self.shifts:
                    y = y + (s * self.shifts[role]).to(out.dtype)
                return y

            handles.append(norm.register_forward_hook(hook))
        return handles


class BitFit(AdapterModule):
    kind = "bitfit"

    def __init__(self, layer_idx, dims, family, ctx, **options):
        super().__init__(layer_idx, dims, family, ctx, **options)
        self.deltas = nn.ParameterDict()

    def attach(self, layer):
        from layerpeft.plan import PlanError

        handles = []
        for role in _LINEARS + _NORMS:
            if not self.family.has(role):
                continue
            mod = self.target(layer, role)
            bias = _bias(mod)
            if bias is None:
                continue
            self.deltas[role] = nn.Parameter(torch.zeros(bias.shape, device=bias.device))

            def hook(_mod, _args, out, role=role):
                return out + (self.response_scale * self.deltas[role]).to(out.dtype)

            handles.append(mod.register_forward_hook(hook))
        if not handles:
            raise PlanError(
                f"bitfit: layer {self.layer_idx} of this {self.family.name} model has no bias terms "
                "(LLaMA-family models have none); choose another method"
            )
        return handles
