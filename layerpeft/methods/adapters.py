"""Bottleneck adapters: parallel (He et al. 2022) and series (Houlsby / Pfeiffer).

Both compute ``s · W_up act(W_down x)`` with ``W_up`` zero-initialised (the model starts
unchanged). Defaults follow LLM-Adapters, whose setup the HLPT paper reuses: bottleneck 256,
tanh, scaling 1.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from layerpeft.methods.base import AdapterModule, check_choice, check_positive_int

_ACTS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class Bottleneck(nn.Module):
    def __init__(self, d: int, bottleneck: int, act: str):
        super().__init__()
        self.down = nn.Linear(d, bottleneck)
        self.up = nn.Linear(bottleneck, d)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.act = _ACTS[act]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x.to(self.down.weight.dtype))))


class _AdapterBase(AdapterModule):
    defaults = {"bottleneck": 256, "act": "tanh", "scale": 1.0}

    @classmethod
    def check_options(cls, opts):
        check_positive_int(cls.kind, opts, "bottleneck")
        check_choice(cls.kind, opts, "act", tuple(_ACTS))


class ParallelAdapter(_AdapterBase):
    """Beside the FFN: ``FFN(x) + s · A(x)`` with ``x`` the FFN's input."""

    kind = "parallel"

    def __init__(self, layer_idx, dims, family, ctx, **options):
        super().__init__(layer_idx, dims, family, ctx, **options)
        self.adapter = Bottleneck(dims.hidden, options["bottleneck"], options["act"])

    def attach(self, layer):
        def hook(_mod, args, out):
            if self.response_scale == 0.0:
                return out
            s = self.options["scale"] * self.response_scale
            return out + (s * self.adapter(args[0])).to(out.dtype)

        return [self.target(layer, "mlp").register_forward_hook(hook)]


class SeriesAdapter(_AdapterBase):
    """After a sublayer's output projection: ``y + s · g(y) · A(y)``.

    ``houlsby`` places one after attention (o) and one after the FFN (down);
    ``pfeiffer`` only after the FFN. ``gate: true`` adds UniPELT's per-token gate
    ``g(y) = sigmoid(w·y + b)`` (otherwise g = 1).
    """

    kind = "series"
    defaults = {**_AdapterBase.defaults, "variant": "houlsby", "gate": False}

    @classmethod
    def check_options(cls, opts):
        super().check_options(opts)
        check_choice(cls.kind, opts, "variant", ("houlsby", "pfeiffer"))

    def __init__(self, layer_idx, dims, family, ctx, **options):
        super().__init__(layer_idx, dims, family, ctx, **options)
        roles = ["o", "down"] if options["variant"] == "houlsby" else ["down"]
        self.adapters = nn.ModuleDict(
            {r: Bottleneck(dims.hidden, options["bottleneck"], options["act"]) for r in roles}
        )
        self.gates = nn.ModuleDict({r: nn.Linear(dims.hidden, 1) for r in roles}) if options["gate"] else None

    def attach(self, layer):
        handles = []
        for role, adapter in self.adapters.items():
            def hook(_mod, _args, out, role=role, adapter=adapter):
                if self.response_scale == 0.0:
                    return out
                s = self.options["scale"] * self.response_scale
                delta = adapter(out)
                if self.gates is not None:
                    delta = delta * torch.sigmoid(self.gates[role](out.to(delta.dtype)))
                return out + (s * delta).to(out.dtype)

            handles.append(self.target(layer, role).register_forward_hook(hook))
        return handles
