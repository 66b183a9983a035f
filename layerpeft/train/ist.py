"""IST, importance-aware sparse tuning (seed 004), as a plug-in over a plan's layer-local modules.

Each optimizer step, only N_u of the plan's layers train: draw ``p_i ~ U(0, sigmoid(I_i))`` and
keep the N_u largest (``policy=random``: a uniform random subset, the paper's ablation). The
other layers' modules get ``requires_grad=False`` for that step, so they receive no gradient,
no optimizer update and no weight decay (AdamW skips parameters without a gradient); and since
the base model is frozen, autograd never goes below the lowest selected layer — that is where
the memory and time saving comes from.

Every ``interval`` steps, ``probes`` candidate sets of N_v layers are scored: the modules
*outside* a set are suppressed to ``beta`` through their response scale, the loss is measured
without gradients, and ``I_i += mu · (exp(-L_j) − mean_k exp(-L_k))`` for the layers in set j.
The importance trajectory is kept for the run directory and the heat map.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from layerpeft.peft_model import AdapterSet
from layerpeft.plan import PlanError

POLICIES = ("importance", "random")


class IST:
    def __init__(self, adapters: AdapterSet, ist_cfg, mu: float):
        blocked = sorted({m.kind for m in adapters.adapter_modules() if not m.layer_local})
        if blocked:
            raise PlanError(
                f"IST works on layer-based modules only; the plan has {', '.join(blocked)} "
                "(prefix-like modules are excluded, as in the IST paper; so are a soft prompt and "
                "full fine-tuning, which are not per-layer adapter modules)"
            )
        if ist_cfg.policy not in POLICIES:
            raise PlanError(f"ist.policy={ist_cfg.policy!r} is not one of {', '.join(POLICIES)}")
        for name in ("update_ratio", "probe_ratio"):
            if not 0.0 < float(ist_cfg[name]) <= 1.0:
                raise PlanError(f"ist.{name}={ist_cfg[name]!r} must be in (0, 1]")
        self.adapters = adapters
        self.layers = sorted({m.layer_idx for m in adapters.adapter_modules()})
        n = len(self.layers)
        self.n_update = max(1, round(float(ist_cfg.update_ratio) * n))
        self.n_probe = max(1, round(float(ist_cfg.probe_ratio) * n))
        self.beta, self.mu = float(ist_cfg.beta), float(mu)
        self.interval, self.probes = int(ist_cfg.interval), int(ist_cfg.probes)
        self.policy = ist_cfg.policy
        self.importance = torch.zeros(n)
        self.generator = torch.Generator().manual_seed(int(ist_cfg.seed))
        self.trajectory: list[dict[str, Any]] = []  # importance after each probe
        self.selections: list[list[int]] = []  # layers trained at each optimizer step

    # --- selection ----------------------------------------------------------------------
    def select(self) -> list[int]:
        """Choose this step's layers and switch gradients on for them only."""
        n = len(self.layers)
        if self.policy == "random":
            idx = torch.randperm(n, generator=self.generator)[: self.n_update]
        else:
            p = torch.rand(n, generator=self.generator) * torch.sigmoid(self.importance)
            idx = torch.topk(p, self.n_update).indices
        selected = sorted(self.layers[i] for i in idx.tolist())
        self.selections.append(selected)
        for m in self.adapters.adapter_modules():
            m.requires_grad_(m.layer_idx in selected)
        return selected

    def release(self) -> None:
        """After training: every module trainable again (e.g. for further fine-tuning)."""
        for m in self.adapters.adapter_modules():
            m.requires_grad_(True)

    # --- importance ---------------------------------------------------------------------
    @torch.no_grad()
    def probe(self, step: int, loss_of: Callable[[], torch.Tensor]) -> None:
        """Every ``interval`` steps: score ``probes`` candidate sets and update the importance."""
        if self.policy == "random" or step % self.interval:
            return
        n = len(self.layers)
        sets, losses = [], []
        for _ in range(self.probes):
            members = torch.randperm(n, generator=self.generator)[: self.n_probe]
            inside = {self.layers[i] for i in members.tolist()}
            for m in self.adapters.adapter_modules():
                m.response_scale = 1.0 if m.layer_idx in inside else self.beta
            losses.append(float(loss_of()))
            sets.append(members)
        self.adapters.set_response_scale(1.0)
        rewards = [math.exp(-x) for x in losses]
        mean = sum(rewards) / len(rewards)
        for members, r in zip(sets, rewards):
            self.importance[members] += self.mu * (r - mean)
        self.trajectory.append({"step": step, "importance": self.importance.tolist(), "losses": losses})

    # --- checkpointing ------------------------------------------------------------------
    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(JSON part, tensor part) for a checkpoint."""
        return ({"trajectory": self.trajectory, "selections": self.selections},
                {"ist.importance": self.importance.clone(), "ist.generator": self.generator.get_state()})

    def load(self, json_part: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.trajectory, self.selections = json_part["trajectory"], json_part["selections"]
        self.importance = tensors["ist.importance"].clone()
        self.generator.set_state(tensors["ist.generator"])

    def summary(self) -> dict[str, Any]:
        return {"layers": self.layers, "n_update": self.n_update, "n_probe": self.n_probe,
                "policy": self.policy, "beta": self.beta, "mu": self.mu,
                "final_importance": self.importance.tolist(), "trajectory": self.trajectory,
                "selections": self.selections}
