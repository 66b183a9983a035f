"""Bottleneck adapters: parallel (He et al. 2022) and series (Houlsby / Pfeiffer).

Both compute ``s · W_up act(W_down x)``. Defaults follow LLM-Adapters, whose setup the HLPT
paper reuses: bottleneck 256, tanh, scaling 1.

``parallel`` has two placements. ``ffn`` is He et al.'s: one adapter beside the whole FFN, with
biases, ``W_up`` zero-initialised (the model starts unchanged); MAM uses it. ``llm_adapters``
is the HLPT paper's adapter baseline as LLM-Adapters builds it for its default targets: a
bias-free adapter on the input of each FFN input projection (LLaMA's gate and up, GPT-J's fc_in:
``W(x + A(x))``) and one on the FFN output projection's output (``y + A(y)``), both weights
drawn from N(0, 0.02) (its "bert" init). Three 4096↔256 adapters per LLaMA-7B layer are the
paper's 201.33M trainable parameters; of LLM-Adapters' configurations only this one gives that
count (its ``use_parallel_adapter`` mode gives 190.84M at its default targets).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from layerpeft.methods.base import AdapterModule, check_choice, check_positive_int

_ACTS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class Bottleneck(nn.Module):
    def __init__(self, d: int, bottleneck: int, act: str, bias: bool = True, init: str = "mam"):
        super().__init__()
        self.down = nn.Linear(d, bottleneck, bias=bias)
        self.up = nn.Linear(bottleneck, d, bias=bias)
        if init == "mam":  # He et al.: the identity at the start
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.up.weight)
        else:  # "bert", LLM-Adapters' default
            nn.init.normal_(self.down.weight, std=0.02)
            nn.init.normal_(self.up.weight, std=0.02)
        for b in (self.down.bias, self.up.bias):
            if b is not None:
                nn.init.zeros_(b)
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
    """``ffn``: beside the FFN, ``FFN(x) + s · A(x)`` with ``x`` the FFN's input.
    ``llm_adapters``: LLM-Adapters' default bottleneck placement (module docstring)."""

    kind = "parallel"
    defaults = {**_AdapterBase.defaults, "placement": "ffn", "bias": True, "init": "mam"}

    @classmethod
    def check_options(cls, opts):
        super().check_options(opts)
        check_choice(cls.kind, opts, "placement", ("ffn", "llm_adapters"))
        check_choice(cls.kind, opts, "bias", (True, False))
        check_choice(cls.kind, opts, "init", ("mam", "bert"))

    def __init__(self, layer_idx, dims, family, ctx, **options):
        super().__init__(layer_idx, dims, family, ctx, **options)
        self.zero_init = options["init"] == "mam"
        make = lambda: Bottleneck(dims.hidden, options["bottleneck"], options["act"], options["bias"], options["init"])
        if options["placement"] == "ffn":
            self.adapter = make()
        else:  # on the input of each FFN input projection, and on the FFN's output projection
            self.inputs = nn.ModuleDict({r: make() for r in ("gate", "up") if family.has(r)})
            self.output = make()

    def _scale(self) -> float:
        return self.options["scale"] * self.response_scale

    def attach(self, layer):
        def add(out, x, adapter):  # out + s · A(x)
            if self.response_scale == 0.0:
                return out
            return out + (self._scale() * adapter(x)).to(out.dtype)

        if self.options["placement"] == "ffn":
            return [self.target(layer, "mlp").register_forward_hook(lambda _m, args, out: add(out, args[0], self.adapter))]
        handles = [self.target(layer, role).register_forward_pre_hook(
                       lambda _m, args, ad=ad: (add(args[0], args[0], ad),) + tuple(args[1:]))
                   for role, ad in self.inputs.items()]
        handles.append(self.target(layer, "down").register_forward_hook(lambda _m, _a, out: add(out, out, self.output)))
        return handles


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
