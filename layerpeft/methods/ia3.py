"""(IA)³ (Liu et al. 2022): learned rescaling of keys, values and the FFN activation.

``k ⊙ l_k``, ``v ⊙ l_v`` and ``down(h ⊙ l_ff)``, vectors initialised to ones. With response
scale s the applied vector is ``1 + s (l − 1)``, so s = 0 is exactly the base model.
"""

from __future__ import annotations

import torch
from torch import nn

from layerpeft.methods.base import AdapterModule
from layerpeft.models.roles import linear_shape

_TARGETS = ("k", "v", "down")


class IA3(AdapterModule):
    kind = "ia3"
    defaults = {"targets": list(_TARGETS)}

    @classmethod
    def check_options(cls, opts):
        from layerpeft.plan import PlanError

        bad = [t for t in opts["targets"] if t not in _TARGETS]
        if bad or not opts["targets"]:
            raise PlanError(f"option ia3.targets={opts['targets']!r}: use any of {', '.join(_TARGETS)}")

    def __init__(self, layer_idx, dims, family, ctx, **options):
        super().__init__(layer_idx, dims, family, ctx, **options)
        self.scales = nn.ParameterDict()
        for role in options["targets"]:
            d_in, d_out = linear_shape(dims, role)
            # k, v scale the projection's output; down scales its input (the FFN activation).
            self.scales[role] = nn.Parameter(torch.ones(d_in if role == "down" else d_out))
        self.merged = False
        self._originals: dict[str, torch.Tensor] = {}

    def _vector(self, role: str) -> torch.Tensor:
        return 1.0 + self.response_scale * (self.scales[role] - 1.0)

    def merge_refusal(self) -> str | None:
        return None

    @torch.no_grad()
    def merge(self) -> None:
        """Scale the weights: k, v rows by their vectors (outputs), down's columns (its input)."""
        if self.merged:
            return
        for role in self.scales:
            mod = self.target(self._layer, role)
            self._originals[role] = mod.weight.detach().clone()
            vec = self._vector(role).to(mod.weight.dtype)
            mod.weight.mul_(vec[None, :] if role == "down" else vec[:, None])
            if role != "down" and mod.bias is not None:
                self._originals[f"{role}.bias"] = mod.bias.detach().clone()
                mod.bias.mul_(vec)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            for key, original in self._originals.items():
                role, _, part = key.partition(".")
                getattr(self.target(self._layer, role), part or "weight").copy_(original)
            self._originals, self.merged = {}, False

    def attach(self, layer):
        handles = []
        for role in self.scales:
            mod = self.target(layer, role)
            if role == "down":
                def pre(_mod, args, role=role):
                    if self.merged:
                        return None
                    x = args[0]
                    return (x * self._vector(role).to(x.dtype),) + tuple(args[1:])

                handles.append(mod.register_forward_pre_hook(pre))
            else:
                def post(_mod, _args, out, role=role):
                    return out if self.merged else out * self._vector(role).to(out.dtype)

                handles.append(mod.register_forward_hook(post))
        object.__setattr__(self, "_layer", layer)
        return handles
