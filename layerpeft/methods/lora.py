"""LoRA, optionally gated (HLPT's bottom module).

``out = W x + s · g(x) · B A dropout(x)`` on each target projection, with ``s = alpha / r``
(``scaling: rank``, Hu et al. and peft) or ``s = alpha`` (``scaling: fixed``, the HLPT paper's
fixed α), ``A`` Kaiming-uniform, ``B`` zero, and — when gated — ``g(x) = sigmoid(w·x + b)``,
one value per token from the projection's own input (HLPT's ``g_l`` on ``h_FN``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from layerpeft.methods.base import AdapterModule, check_choice, check_positive_int
from layerpeft.models.roles import linear_shape

ALL_TARGETS = ["q", "k", "v", "o", "up", "gate", "down"]


def resolve_targets(targets) -> list[str]:
    if targets == "all":
        return list(ALL_TARGETS)
    if isinstance(targets, str):
        return [targets]
    return list(targets)


class LoRA(AdapterModule):
    kind = "lora"
    defaults = {
        "r": 8,
        "alpha": 16.0,
        "dropout": 0.05,
        "targets": ["q", "v"],
        "gate": False,
        "scaling": "rank",
    }

    @classmethod
    def check_options(cls, opts):
        from layerpeft.plan import PlanError

        check_positive_int(cls.kind, opts, "r")
        check_choice(cls.kind, opts, "scaling", ("rank", "fixed"))
        targets = resolve_targets(opts["targets"])
        bad = [t for t in targets if t not in ALL_TARGETS]
        if bad or not targets:
            raise PlanError(
                f"option {cls.kind}.targets={opts['targets']!r}: unknown target(s) {bad}; "
                f"use any of {', '.join(ALL_TARGETS)} or 'all'"
            )
        if not 0.0 <= float(opts["dropout"]) < 1.0:
            raise PlanError(f"option {cls.kind}.dropout={opts['dropout']!r} must be in [0, 1)")

    def __init__(self, layer_idx, dims, family, ctx, **options):
        super().__init__(layer_idx, dims, family, ctx, **options)
        r = options["r"]
        self.targets = [t for t in resolve_targets(options["targets"]) if family.has(t)]
        self.scale = options["alpha"] / r if options["scaling"] == "rank" else float(options["alpha"])
        self.A = nn.ParameterDict()
        self.B = nn.ParameterDict()
        self.gates = nn.ModuleDict() if options["gate"] else None
        for role in self.targets:
            d_in, d_out = linear_shape(dims, role)
            a = torch.empty(r, d_in)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.A[role] = nn.Parameter(a)
            self.B[role] = nn.Parameter(torch.zeros(d_out, r))
            if self.gates is not None:
                self.gates[role] = nn.Linear(d_in, 1)  # Kaiming-uniform by default
        self.dropout = nn.Dropout(options["dropout"])
        self.merged = False

    def merge_refusal(self) -> str | None:
        if self.gates is not None:
            return f"{self.kind} is gated: the gate scales the update by a function of each token"
        return None

    def _delta_weight(self, role: str) -> torch.Tensor:
        """``s · B A`` (response scale included), the update as a weight (out × in)."""
        return (self.scale * self.response_scale) * (self.B[role] @ self.A[role])

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update to the target weights; the hooks then pass outputs through."""
        if not self.merged:
            for role in self.targets:
                w = self.target(self._layer, role).weight
                w += self._delta_weight(role).to(w.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            for role in self.targets:
                w = self.target(self._layer, role).weight
                w -= self._delta_weight(role).to(w.dtype)
            self.merged = False

    def delta(self, role: str, x: torch.Tensor) -> torch.Tensor:
        a, b = self.A[role], self.B[role]
        h = self.dropout(x.to(a.dtype)) @ a.t() @ b.t()
        scale = self.scale * self.response_scale
        if self.gates is not None:
            return h * (scale * torch.sigmoid(self.gates[role](x.to(a.dtype))))
        return h * scale

    def attach(self, layer):
        handles = []
        for role in self.targets:
            def hook(_mod, args, out, role=role):
                if self.merged or self.response_scale == 0.0:
                    return out
                return out + self.delta(role, args[0]).to(out.dtype)

            handles.append(self.target(layer, role).register_forward_hook(hook))
        object.__setattr__(self, "_layer", layer)
        return handles


class LoRAFFN(LoRA):
    """HLPT's bottom module: gated LoRA on the FFN down projection W2, fixed α = 2."""

    kind = "lora_ffn"
    defaults = {**LoRA.defaults, "targets": ["down"], "gate": True, "alpha": 2.0, "scaling": "fixed"}


class LoRAAttn(LoRA):
    """HLPT's ablation bottom module (Table 3, "on atten"): gated LoRA on q and v."""

    kind = "lora_attn"
    defaults = {**LoRA.defaults, "targets": ["q", "v"], "gate": True, "alpha": 2.0, "scaling": "fixed"}

