"""IST: sparse layer selection, the importance update, resume, and the random ablation."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from conftest import case_cfg
from layerpeft import apply_plan
from layerpeft.commands.plan import plan_for
from layerpeft.config import compose
from layerpeft.data.synthetic import synthetic_math
from layerpeft.models.loading import load_model
from layerpeft.plan import PlanError
from layerpeft.tracking import Tracker
from layerpeft.train.ist import IST
from layerpeft.train.loop import pick_device, train

IST_CFG = OmegaConf.create({"update_ratio": 0.5, "probe_ratio": 0.5, "beta": 0.25, "interval": 1, "probes": 3,
                            "policy": "importance", "seed": 0})


def build(case="lora", model="tiny"):
    cfg = case_cfg(model, case)
    m, _ = load_model(cfg.model)
    return m, apply_plan(m, plan_for(cfg))


def layer_state(adapters):
    return {int(i): [p.detach().clone() for p in mods.parameters()] for i, mods in adapters.layers.items()}


@pytest.mark.parametrize("case", ["lora", "ia3", "series", "parallel", "para", "tied_lora"])
def test_exactly_the_selected_layers_change_each_step(case):
    model, adapters = build(case)
    ist = IST(adapters, IST_CFG, mu=100.0)
    assert ist.n_update == 2
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)  # decay must not touch skipped layers
    ids = torch.randint(3, 259, (2, 10))
    model.train()
    for _ in range(4):
        selected = ist.select()
        assert len(selected) == 2
        outs = {}
        hooks = [layer.register_forward_hook(lambda _m, _a, out, i=i: outs.__setitem__(i, out))
                 for i, layer in enumerate(model.model.layers)]
        before = layer_state(adapters)
        model(input_ids=ids, labels=ids).loss.backward()
        for h in hooks:
            h.remove()
        opt.step()
        opt.zero_grad(set_to_none=True)
        after = layer_state(adapters)
        for i in before:
            same = all(torch.equal(a, b) for a, b in zip(before[i], after[i]))
            assert same is (i not in selected), f"layer {i}, selected {selected}"
        # backpropagation starts at the lowest selected layer: nothing below it is in the graph
        below = [i for i in range(4) if i < min(selected)]
        out = lambda i: outs[i][0] if isinstance(outs[i], tuple) else outs[i]
        assert all(not out(i).requires_grad for i in below)
        assert out(min(selected)).requires_grad


def test_importance_rises_for_a_layer_whose_suppression_hurts():
    model, adapters = build("lora")
    ist = IST(adapters, OmegaConf.merge(IST_CFG, {"probes": 4}), mu=10.0)
    mods = {m.layer_idx: m for m in adapters.adapter_modules()}

    def loss_of():  # constructed: the loss grows when layer 2 is suppressed, nothing else matters
        return torch.tensor(1.0 + 2.0 * (1.0 - mods[2].response_scale))

    for step in range(30):
        ist.probe(step, loss_of)
    assert all(m.response_scale == 1.0 for m in mods.values())  # probes restore the scales
    imp = ist.importance
    assert imp[2] > 0 and int(torch.argmax(imp)) == 2
    assert len(ist.trajectory) == 30


def test_random_policy_ignores_the_scores():
    _, adapters = build("lora")
    cfg = OmegaConf.merge(IST_CFG, {"policy": "random", "update_ratio": 0.25})
    a, b = IST(adapters, cfg, mu=1.0), IST(adapters, cfg, mu=1.0)
    b.importance = torch.tensor([100.0, -100.0, -100.0, -100.0])
    assert [a.select() for _ in range(20)] == [b.select() for _ in range(20)]
    imp = IST(adapters, OmegaConf.merge(IST_CFG, {"update_ratio": 0.25}), mu=1.0)
    imp.importance = torch.tensor([100.0, -100.0, -100.0, -100.0])
    assert all(imp.select() == [0] for _ in range(20))


def test_prefix_plans_are_refused_with_a_clear_message():
    _, adapters = build("hlpt")
    with pytest.raises(PlanError, match="IST works on layer-based modules only; the plan has prefix"):
        IST(adapters, IST_CFG, mu=1.0)


def test_resume_restores_the_same_selection_sequence(tmp_path):
    overrides = ["model=tiny", "method=lora", "dataset=synthetic_math", "logger=none", "ist.enabled=true",
                 "ist.update_ratio=0.5", "ist.interval=2", "train.max_steps=10", "train.save_steps=4",
                 "train.batch_size=8", "train.micro_batch_size=4"]
    data = synthetic_math(64, 0)

    def run(run_dir, tracker=Tracker(), resume=False):
        cfg = compose("train", overrides + [f"train.resume={str(resume).lower()}"])
        model, tok = load_model(cfg.model)
        apply_plan(model, plan_for(cfg))
        return train(model, tok, data, cfg, run_dir, pick_device(cfg.train), tracker), model

    full, full_model = run(tmp_path / "full")

    class Crash(Tracker):
        def log(self, values, step=None):
            if step == 6:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", Crash())
    resumed, resumed_model = run(tmp_path / "cut", resume=True)
    assert resumed["ist"]["selections"] == full["ist"]["selections"] and len(full["ist"]["selections"]) == 10
    assert resumed["ist"]["trajectory"] == full["ist"]["trajectory"]
    assert resumed["final_loss"] == pytest.approx(full["final_loss"], rel=1e-6)
    for a, b in zip(full_model.layerpeft.parameters(), resumed_model.layerpeft.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
