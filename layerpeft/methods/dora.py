"""DoRA (Liu et al. 2024): weight-decomposed low-rank adaptation.

``W' = m ⊙ (W + s B A) / ‖W + s B A‖`` with the norm taken per output row (over the input
dimension), ``m`` initialised to ``‖W‖`` and B = 0, so the model starts unchanged. As in the
paper (and peft), the norm is treated as a constant in the backward pass, which saves memory.
In the hook: ``y' = (m / ‖W + s B A‖) ⊙ (W x + s B A x) + b``.

``m`` is initialised from the frozen base weight when the module attaches to its layer.
"""

from __future__ import annotations

import torch
from torch import nn

from layerpeft.methods.lora import LoRA


class DoRA(LoRA):
    kind = "dora"
    defaults = {**LoRA.defaults, "gate": False}

    @classmethod
    def check_options(cls, opts):
        from layerpeft.plan import PlanError

        super().check_options(opts)
        if opts["gate"]:
            raise PlanError("option dora.gate=true: DoRA has no gated variant")

    def __init__(self, layer_idx, dims, family, ctx, **options):
        super().__init__(layer_idx, dims, family, ctx, **options)
        self.magnitude = nn.ParameterDict()
        self.merged = False
        self._originals: dict[str, torch.Tensor] = {}

    def _weight(self, role: str, base: nn.Linear) -> torch.Tensor:
        """W + s·B·A (response scale included) in the adapter's dtype."""
        a, b = self.A[role], self.B[role]
        return base.weight.to(a.dtype) + (self.scale * self.response_scale) * (b @ a)

    def attach(self, layer):
        handles = []
        for role in self.targets:
            base = self.target(layer, role)
            with torch.no_grad():
                self.magnitude[role] = nn.Parameter(base.weight.float().norm(dim=1))

            def hook(_mod, args, out, role=role, base=base):
                if self.merged or self.response_scale == 0.0:
                    return out
                x = args[0]
                bias = base.bias if base.bias is not None else 0.0
                norm = self._weight(role, base).norm(dim=1).detach()
                lora = self.dropout(x.to(self.A[role].dtype)) @ self.A[role].t() @ self.B[role].t()
                y = (out - bias).to(lora.dtype) + (self.scale * self.response_scale) * lora
                scale = 1.0 + self.response_scale * (self.magnitude[role] / norm - 1.0)
                return (y * scale + bias).to(out.dtype)

            handles.append(base.register_forward_hook(hook))
        object.__setattr__(self, "_layer", layer)
        return handles

    def merge_refusal(self) -> str | None:
        return None

    @torch.no_grad()
    def merge(self) -> None:
        """Replace W by m ⊙ (W + sBA)/‖W + sBA‖; the original is kept to unmerge."""
        if self.merged:
            return
        for role in self.targets:
            base = self.target(self._layer, role)
            w = self._weight(role, base)
            self._originals[role] = base.weight.detach().clone()
            scale = 1.0 + self.response_scale * (self.magnitude[role] / w.norm(dim=1) - 1.0)
            base.weight.copy_((w * scale[:, None]).to(base.weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            for role in self.targets:
                self.target(self._layer, role).weight.copy_(self._originals[role])
            self._originals = {}
            self.merged = False
