"""Tied-LoRA (Renduchintala et al.) and VeRA as presets of one module kind.

On the attention's joint QKV projection: ``z = W x + Λ_v B Λ_u A x`` with A (r × d) and
B (q+k+v out × r) — one A and one B split across q, k and v for models with separate
projections — and per-layer vectors u (r) and v (q+k+v out). α = r, so no extra scale.

Each preset (Table 1 of the paper) fixes what is tied across layers, what trains and how it
starts. Tied tensors live once in ``AdapterSet.shared`` — one tensor, one gradient (the sum of
the layers'), one optimizer state — and tie only across the layers the plan gives this kind.
Frozen random matrices are regenerated from ``seed`` rather than stored, so a ``vera`` or
``tied_a`` adapter holds only what trains. ``merge()`` folds the update into the base weights
for inference; ``unmerge()`` takes it out again.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from layerpeft.methods.base import AdapterModule, check_choice, check_positive_int
from layerpeft.models.roles import Dims

# preset → (A and B tied across layers, parts that train, init)
#   init "b_zero": A random, B = 0, u = v = 1;  "v_zero": A, B random, u = 1, v = 0;
#   "random": A, B random, u = v = 1 (not the identity at the start).
PRESETS: dict[str, tuple[bool, frozenset[str], str]] = {
    "lora": (False, frozenset("AB"), "b_zero"),
    "tied_ab": (True, frozenset("AB"), "b_zero"),
    "tied_ab_uv": (True, frozenset("ABuv"), "v_zero"),
    "tied_b_u": (True, frozenset("Bu"), "random"),
    "tied_b": (True, frozenset("B"), "random"),
    "tied_a_uv": (True, frozenset("Auv"), "v_zero"),
    "tied_a": (True, frozenset("A"), "random"),
    "vera": (True, frozenset("uv"), "v_zero"),
}
QKV = ("q", "k", "v")


def qkv_out(dims: Dims) -> int:
    return dims.q_out + 2 * dims.kv_out


def _uniform(shape: tuple[int, int], fan_in: int, generator: torch.Generator) -> torch.Tensor:
    """Kaiming-uniform (a=√5, as nn.Linear) from an explicit generator: reproducible from a seed.
    On the meta device (shapes only: ``layerpeft plan``, adapter-file checks) nothing is drawn."""
    if torch.get_default_device().type == "meta":
        return torch.empty(shape)
    bound = 1.0 / math.sqrt(fan_in)
    t = (torch.rand(shape, generator=generator, device="cpu") * 2 - 1) * bound
    return t.to(torch.get_default_device())


class _Matrices(nn.Module):
    """A and B for one group of layers: trained ones are parameters, frozen ones buffers
    that are rebuilt from the seed and never saved."""

    def __init__(self, dims: Dims, r: int, trains: frozenset[str], init: str, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        a = _uniform((r, dims.hidden), dims.hidden, g)
        b = torch.zeros(qkv_out(dims), r) if init == "b_zero" else _uniform((qkv_out(dims), r), r, g)
        for name, t in (("A", a), ("B", b)):
            if name in trains:
                setattr(self, name, nn.Parameter(t))
            else:
                self.register_buffer(name, t, persistent=False)


class TiedLoRA(AdapterModule):
    kind = "tied_lora"
    defaults = {"preset": "tied_ab_uv", "r": 8, "seed": 0}

    @classmethod
    def check_options(cls, opts):
        check_choice(cls.kind, opts, "preset", tuple(PRESETS))
        check_positive_int(cls.kind, opts, "r")

    @classmethod
    def make_shared(cls, dims: Dims, options: dict) -> nn.Module | None:
        tied, trains, init = PRESETS[options["preset"]]
        return _Matrices(dims, options["r"], trains, init, options["seed"]) if tied else None

    def __init__(self, layer_idx, dims, family, ctx, shared=None, **options):
        super().__init__(layer_idx, dims, family, ctx, **options)
        tied, trains, init = PRESETS[options["preset"]]
        self.zero_init = init != "random"
        if tied:
            object.__setattr__(self, "mats", shared)  # owned by AdapterSet.shared
        else:
            self.own = _Matrices(dims, options["r"], trains, init, options["seed"] + 1 + layer_idx)
            object.__setattr__(self, "mats", self.own)
        r, out = options["r"], qkv_out(dims)
        self.u = nn.Parameter(torch.ones(r)) if "u" in trains else None
        self.v = nn.Parameter(torch.zeros(out) if init == "v_zero" else torch.ones(out)) if "v" in trains else None
        self.slices = {"q": (0, dims.q_out), "k": (dims.q_out, dims.q_out + dims.kv_out),
                       "v": (dims.q_out + dims.kv_out, out)}
        self.merged = False
        self.shared_grad = True
        self._h: torch.Tensor | None = None

    def requires_grad_(self, requires_grad: bool = True):
        """Also decides whether this layer's use of the tied A/B carries gradient, so a layer
        that IST leaves out of a step adds nothing to the shared tensors' gradient and
        backpropagation need not reach it."""
        super().requires_grad_(requires_grad)
        self.shared_grad = requires_grad
        return self

    def _ab(self) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.mats.A, self.mats.B
        return (a, b) if self.shared_grad else (a.detach(), b.detach())

    def _delta_weight(self, role: str) -> torch.Tensor:
        """``diag(v) B diag(u) A`` restricted to one projection's rows (out × d)."""
        lo, hi = self.slices[role]
        b = self.mats.B[lo:hi]
        if self.v is not None:
            b = b * self.v[lo:hi, None]
        a = self.mats.A if self.u is None else self.mats.A * self.u[:, None]
        return b @ a

    def _project(self, _mod, args, kwargs):
        x = kwargs.get("hidden_states", args[0] if args else None)
        a, _ = self._ab()
        h = x.to(a.dtype) @ a.t()
        self._h = h if self.u is None else h * self.u
        return None

    def attach(self, layer):
        handles = [self.target(layer, "attention").register_forward_pre_hook(self._project, with_kwargs=True)]
        for role in QKV:
            def hook(_mod, _args, out, role=role):
                if self.merged or self.response_scale == 0.0:
                    return out
                lo, hi = self.slices[role]
                d = self._h @ self._ab()[1][lo:hi].t()
                if self.v is not None:
                    d = d * self.v[lo:hi]
                return out + (d * self.response_scale).to(out.dtype)

            handles.append(self.target(layer, role).register_forward_hook(hook))
        object.__setattr__(self, "_layer", layer)
        return handles

    def merge_refusal(self) -> str | None:
        return None

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update to the base q/k/v weights; the hooks then pass outputs through."""
        if not self.merged:
            for role in QKV:
                w = self.target(self._layer, role).weight
                w += (self.response_scale * self._delta_weight(role)).to(w.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            for role in QKV:
                w = self.target(self._layer, role).weight
                w -= (self.response_scale * self._delta_weight(role)).to(w.dtype)
            self.merged = False
