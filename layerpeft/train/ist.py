"""IST, importance-aware sparse tuning (seed 004), as a plug-in over a plan's layer-local modules.

Each optimizer step only some of the plan's layers train: the others' modules get
``requires_grad=False`` for that step, so they receive no gradient, no optimizer update and no
weight decay (AdamW skips parameters without a gradient); and since the base model is frozen,
autograd never goes below the lowest selected layer — that is where the memory and time saving
comes from. Every ``interval`` steps the importance scores are updated from ``probes`` loss
measurements, each with some layers' modules suppressed to ``beta`` through their response scale.

Two variants (``ist.variant``), because the paper's equations and its code differ:

- ``official`` (default; the authors' ``ist.py``, which produced the paper's tables): the
  update starts after step 0; each probe round draws a fresh batch of ``probe_batch_size``
  (16) examples from a shuffled pass over the training data and measures the loss with the
  model in eval mode (no dropout) and without gradients. Each of the ``probes`` rounds
  *suppresses* a distinct set of ``int(probe_ratio · L)`` layers drawn by multinomial sampling
  without replacement on sigmoid(I), and those layers get
  ``I += r · sigmoid(I)(1 − sigmoid(I)) · mu`` (bounded: |step| ≤ mu/4), with
  ``r = exp(−L_j) − mean_k exp(−L_k)`` and mu = 10 (the code's ``rl_lr``) unless set.
  Each step trains ``int(update_ratio · L)`` layers drawn by multinomial sampling on
  sigmoid(−I): I grows for layers whose suppression does *not* hurt, which then train less.
- ``paper`` (the equations as printed): each candidate set of ``int(probe_ratio · L)``
  uniformly drawn layers is *kept*, the layers outside it are suppressed, and
  ``I += mu · r`` for the layers in the set (unbounded; mu 10 on commonsense, 100 on math unless
  set); each step draws ``p_i ~ U(0, sigmoid(I_i))`` and trains the ``int(update_ratio · L)``
  largest. The paper does not say which batch the probes use or when they start: this variant
  takes the official code's (a fresh batch in eval mode, after step 0).

``policy=random`` (the paper's random-sparse ablation) trains a uniform random subset each step
and never probes. The importance trajectory is kept for the run directory and the heat map.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from layerpeft.peft_model import AdapterSet
from layerpeft.plan import PlanError

POLICIES = ("importance", "random")
VARIANTS = ("official", "paper")
#: The official code's importance learning rate (``rl_lr``), used when ``ist.mu`` is unset.
OFFICIAL_MU = 10.0


def default_mu(variant: str, dataset: str) -> float:
    """The importance step when ``ist.mu`` is null: the code's 10, or the paper's per task."""
    if variant == "official":
        return OFFICIAL_MU
    return 10.0 if "commonsense" in dataset else 100.0


def check_plan(kinds) -> None:
    """IST selects per-layer modules: refuse a plan with prefix-like ones (before weights load)."""
    from layerpeft.methods import MODULE_KINDS

    blocked = sorted(k for k in kinds if not MODULE_KINDS[k].layer_local)
    if blocked:
        raise PlanError(
            f"IST works on layer-based modules only; the plan has {', '.join(blocked)} "
            "(prefix-like modules are excluded, as in the IST paper; so are a soft prompt and "
            "full fine-tuning, which are not per-layer adapter modules)"
        )


def check_config(ist_cfg) -> None:
    """Raise ``PlanError`` naming a bad ``ist.*`` value (called before any weights load)."""
    if ist_cfg.policy not in POLICIES:
        raise PlanError(f"ist.policy={ist_cfg.policy!r} is not one of {', '.join(POLICIES)}")
    if ist_cfg.variant not in VARIANTS:
        raise PlanError(f"ist.variant={ist_cfg.variant!r} is not one of {', '.join(VARIANTS)}")
    for name in ("update_ratio", "probe_ratio"):
        if not 0.0 < float(ist_cfg[name]) <= 1.0:
            raise PlanError(f"ist.{name}={ist_cfg[name]!r} must be in (0, 1]")
    if not 0.0 <= float(ist_cfg.beta) <= 1.0:
        raise PlanError(f"ist.beta={ist_cfg.beta!r} must be in [0, 1]")
    for name in ("interval", "probes", "probe_batch_size"):
        v = ist_cfg[name]
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise PlanError(f"ist.{name}={v!r} must be a positive integer")
    if ist_cfg.mu is not None and float(ist_cfg.mu) < 0:
        raise PlanError(f"ist.mu={ist_cfg.mu!r} must be >= 0")


class IST:
    """Layer selection and importance scores over ``adapters``' layers.

    ``num_examples`` is the size of the training set the probe batches are drawn from."""

    def __init__(self, adapters: AdapterSet, ist_cfg, mu: float, num_examples: int = 0):
        check_plan({m.kind for m in adapters.adapter_modules()})
        check_config(ist_cfg)
        self.adapters = adapters
        self.layers = sorted({m.layer_idx for m in adapters.adapter_modules()})
        n = len(self.layers)
        self.n_update = max(1, int(float(ist_cfg.update_ratio) * n))
        self.n_probe = max(1, int(float(ist_cfg.probe_ratio) * n))
        self.beta, self.mu = float(ist_cfg.beta), float(mu)
        self.interval, self.probes = int(ist_cfg.interval), int(ist_cfg.probes)
        self.policy, self.variant = ist_cfg.policy, ist_cfg.variant
        self.probe_batch_size, self.num_examples = int(ist_cfg.probe_batch_size), int(num_examples)
        self.importance = torch.zeros(n)
        self.generator = torch.Generator().manual_seed(int(ist_cfg.seed))
        self.probe_order: list[int] = []  # the current shuffled pass over the training data
        self.trajectory: list[dict[str, Any]] = []  # importance after each probe round
        self.selections: list[list[int]] = []  # layers trained at each optimizer step

    # --- selection ----------------------------------------------------------------------
    def select(self) -> list[int]:
        """Choose this step's layers and switch gradients on for them only."""
        n = len(self.layers)
        if self.policy == "random":
            idx = torch.randperm(n, generator=self.generator)[: self.n_update]
        elif self.variant == "official":
            idx = torch.multinomial(torch.sigmoid(-self.importance), self.n_update, generator=self.generator)
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
    def due(self, step: int) -> bool:
        """Whether the importance is updated before optimizer step ``step`` (0-based)."""
        return self.policy == "importance" and step > 0 and step % self.interval == 0

    def next_probe_batch(self) -> list[int]:
        """Indices of the next ``probe_batch_size`` training examples of a shuffled pass; a new
        pass starts when one is used up (its last, shorter batch included)."""
        if not self.probe_order:
            self.probe_order = torch.randperm(self.num_examples, generator=self.generator).tolist()
        batch, self.probe_order = self.probe_order[: self.probe_batch_size], self.probe_order[self.probe_batch_size:]
        return batch

    def _candidate_sets(self) -> list[torch.Tensor]:
        n, sets = len(self.layers), []
        while len(sets) < self.probes:
            if self.variant == "official":  # distinct sets, drawn on sigmoid(I)
                s = torch.sort(torch.multinomial(torch.sigmoid(self.importance), self.n_probe,
                                                 generator=self.generator)).values
                if any(torch.equal(s, t) for t in sets) and math.comb(n, self.n_probe) > len(sets):
                    continue
            else:
                s = torch.sort(torch.randperm(n, generator=self.generator)[: self.n_probe]).values
            sets.append(s)
        return sets

    @torch.no_grad()
    def probe(self, step: int, loss_of: Callable[[list[int]], float]) -> None:
        """If due, measure ``loss_of(batch)`` under each candidate set's suppression and update
        the importance. ``loss_of`` evaluates the training examples ``batch`` (indices) with the
        model in eval mode, without gradients, and leaves the model as it found it."""
        if not self.due(step):
            return
        batch = self.next_probe_batch()
        sets, losses = self._candidate_sets(), []
        for members in sets:
            chosen = {self.layers[i] for i in members.tolist()}
            for m in self.adapters.adapter_modules():
                # official: the drawn layers are suppressed; paper: the layers outside the set
                suppressed = (m.layer_idx in chosen) == (self.variant == "official")
                m.response_scale = self.beta if suppressed else 1.0
            losses.append(float(loss_of(batch)))
        self.adapters.set_response_scale(1.0)
        rewards = [math.exp(-x) for x in losses]
        mean = sum(rewards) / len(rewards)
        slope = torch.sigmoid(self.importance) * (1 - torch.sigmoid(self.importance))  # before the update
        for members, r in zip(sets, rewards):
            if self.variant == "official":
                self.importance[members] += (r - mean) * slope[members] * self.mu
            else:
                self.importance[members] += self.mu * (r - mean)
        self.trajectory.append({"step": step, "importance": self.importance.tolist(), "losses": losses,
                                "sets": [[self.layers[i] for i in s.tolist()] for s in sets]})

    # --- checkpointing ------------------------------------------------------------------
    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(JSON part, tensor part) for a checkpoint."""
        return ({"trajectory": self.trajectory, "selections": self.selections, "probe_order": self.probe_order},
                {"ist.importance": self.importance.clone(), "ist.generator": self.generator.get_state()})

    def load(self, json_part: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.trajectory, self.selections = json_part["trajectory"], json_part["selections"]
        self.probe_order = json_part.get("probe_order", [])
        self.importance = tensors["ist.importance"].clone()
        self.generator.set_state(tensors["ist.generator"])

    def summary(self) -> dict[str, Any]:
        return {"layers": self.layers, "n_update": self.n_update, "n_probe": self.n_probe,
                "policy": self.policy, "variant": self.variant, "beta": self.beta, "mu": self.mu,
                "probe_batch_size": self.probe_batch_size,
                "final_importance": self.importance.tolist(), "trajectory": self.trajectory,
                "selections": self.selections}
