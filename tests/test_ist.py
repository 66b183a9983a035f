"""IST: sparse layer selection, the importance update, resume, and the random ablation."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from conftest import case_cfg
from layerpeft import apply_plan
from layerpeft.commands.plan import plan_for
from layerpeft.config import compose
from layerpeft.data.prompts import collate, tokenize_example
from layerpeft.data.synthetic import synthetic_math
from layerpeft.models.loading import load_model
from layerpeft.plan import PlanError
from layerpeft.tracking import Tracker
from layerpeft.train.ist import IST
from layerpeft.train.loop import examples_loss, pick_device, train

IST_CFG = OmegaConf.create({"update_ratio": 0.5, "probe_ratio": 0.5, "beta": 0.25, "interval": 1, "probes": 3,
                            "probe_batch_size": 16, "policy": "importance", "variant": "official", "mu": None,
                            "seed": 0})


def cfg_with(**changes):
    return OmegaConf.merge(IST_CFG, changes)


def build(case="lora", model="tiny"):
    cfg = case_cfg(model, case)
    m, _ = load_model(cfg.model)
    return m, apply_plan(m, plan_for(cfg))


def layer_state(adapters):
    return {int(i): [p.detach().clone() for p in mods.parameters()] for i, mods in adapters.layers.items()}


@pytest.mark.parametrize("variant", ["official", "paper"])
@pytest.mark.parametrize("case", ["lora", "ia3", "series", "parallel", "para", "tied_lora"])
def test_exactly_the_selected_layers_change_each_step(case, variant):
    model, adapters = build(case)
    ist = IST(adapters, cfg_with(variant=variant), mu=100.0)
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


def constructed_loss(adapters, hurts=2):
    """A loss that grows when layer ``hurts`` is suppressed; nothing else matters."""
    mods = {m.layer_idx: m for m in adapters.adapter_modules()}
    return lambda _batch: 1.0 + 2.0 * (1.0 - mods[hurts].response_scale)


def test_paper_variant_raises_the_importance_of_a_layer_whose_suppression_hurts():
    _, adapters = build("lora")
    ist = IST(adapters, cfg_with(variant="paper", probes=4), mu=10.0, num_examples=40)
    for step in range(1, 31):
        ist.probe(step, constructed_loss(adapters))
    assert all(m.response_scale == 1.0 for m in adapters.adapter_modules())  # probes restore the scales
    assert ist.importance[2] > 0 and int(torch.argmax(ist.importance)) == 2
    assert len(ist.trajectory) == 30
    # kept sets: every probe round kept probe_ratio of the layers and suppressed the rest
    assert all(len(s) == 2 for point in ist.trajectory for s in point["sets"])


def test_official_variant_scores_suppression_and_trains_the_layer_that_matters():
    """The authors' code raises I for the layers whose suppression does not hurt and trains
    by sigmoid(-I): the layer that matters ends with the lowest score and trains most."""
    _, adapters = build("lora")
    ist = IST(adapters, cfg_with(update_ratio=0.25), mu=10.0, num_examples=40)
    for step in range(1, 61):
        ist.probe(step, constructed_loss(adapters))
    assert int(torch.argmin(ist.importance)) == 2
    picks = [ist.select()[0] for _ in range(400)]
    assert max(range(4), key=picks.count) == 2


def test_official_update_is_bounded_and_the_paper_update_is_not():
    """sigmoid(I)(1 - sigmoid(I)) <= 1/4 and |r| <= 1: a layer moves at most probes * mu / 4 per
    update; the printed update mu * r has no such bound."""
    extreme = lambda adapters: (lambda _b: 0.0 if next(adapters.adapter_modules()).response_scale == 1.0 else 50.0)
    sizes = {}
    for variant in ("official", "paper"):
        _, adapters = build("lora")
        ist = IST(adapters, cfg_with(variant=variant), mu=100.0, num_examples=40)
        before, steps = ist.importance.clone(), []
        for step in range(1, 41):
            ist.probe(step, extreme(adapters))
            steps.append(float((ist.importance - before).abs().max()))
            before = ist.importance.clone()
        sizes[variant] = (max(steps), float(ist.importance.abs().max()))
    assert sizes["official"][0] <= 3 * 100.0 / 4 + 1e-6
    assert sizes["paper"][1] > 10 * sizes["official"][1]


def test_probes_start_after_step_zero_and_draw_fresh_batches_from_a_shuffled_pass():
    _, adapters = build("lora")
    ist = IST(adapters, cfg_with(interval=10), mu=10.0, num_examples=40)
    assert [s for s in range(31) if ist.due(s)] == [10, 20, 30]
    batches = [ist.next_probe_batch() for _ in range(3)]
    assert [len(b) for b in batches] == [16, 16, 8]  # the last, shorter batch of a pass is used
    assert sorted(i for b in batches for i in b) == list(range(40))
    assert len(ist.next_probe_batch()) == 16  # a new pass


def test_probe_loss_is_the_eval_mode_loss_and_changes_nothing():
    """Probes measure in eval mode (no dropout), without gradients, and hand the model back in
    training mode with its weights and requires_grad flags untouched."""
    cfg = compose("train", ["model=tiny", "method=lora", "method.options.lora.dropout=0.5"])
    model, tok = load_model(cfg.model)
    adapters = apply_plan(model, plan_for(cfg))
    with torch.no_grad():
        for p in adapters.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    data = [tokenize_example(tok, ex, 256, True) for ex in synthetic_math(20, 0)]
    loss = examples_loss(model, tok, data, 4, pick_device(OmegaConf.create({"device": "cpu", "precision": "fp32"})))
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    first, again = loss(list(range(10))), loss(list(range(10)))
    assert first == again  # dropout would make two measurements differ
    assert model.training and all(m.training for m in adapters.modules())
    assert all(torch.equal(p, before[n]) and p.requires_grad == grads[n] for n, p in model.named_parameters())
    model.eval()
    with torch.no_grad():
        batch = collate(data[:10], tok.pad_token_id)
        expected = model(**batch).loss.item()
    assert first == pytest.approx(expected, rel=1e-5)


def test_random_policy_ignores_the_scores():
    _, adapters = build("lora")
    cfg = cfg_with(policy="random", update_ratio=0.25)
    a, b = IST(adapters, cfg, mu=1.0), IST(adapters, cfg, mu=1.0)
    b.importance = torch.tensor([100.0, -100.0, -100.0, -100.0])
    assert [a.select() for _ in range(20)] == [b.select() for _ in range(20)]
    assert not a.due(10)  # and never probes
    for variant, expected in (("paper", [0]), ("official", None)):
        imp = IST(adapters, cfg_with(update_ratio=0.25, variant=variant), mu=1.0)
        imp.importance = torch.tensor([100.0, -100.0, -100.0, -100.0])
        picks = [imp.select() for _ in range(20)]
        if expected:  # paper: the largest U(0, sigmoid(I)) draw, always layer 0
            assert all(p == expected for p in picks)
        else:  # official: sampled on sigmoid(-I), never layer 0
            assert all(p != [0] for p in picks)


def test_bad_ist_values_are_refused():
    _, adapters = build("lora")
    with pytest.raises(PlanError, match="ist.variant='printed' is not one of official, paper"):
        IST(adapters, cfg_with(variant="printed"), mu=1.0)
    with pytest.raises(PlanError, match="ist.probe_batch_size=0 must be a positive integer"):
        IST(adapters, cfg_with(probe_batch_size=0), mu=1.0)


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
