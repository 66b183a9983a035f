"""Tied-LoRA / VeRA: Table 1 counts, true tying, frozen parts, merging, small adapters."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from conftest import case_cfg, merge_roundtrip
from layerpeft import apply_plan, load_adapter, save_adapter
from layerpeft.commands.plan import plan_for, plan_summary
from layerpeft.config import compose
from layerpeft.methods.tied_lora import PRESETS
from layerpeft.models.loading import load_model
from layerpeft.peft_model import ADAPTER_FILE

TABLE1_R8 = {  # Tied-LoRA paper Table 1, LLaMA-2-7B, r = 8
    "lora": 4_194_304, "tied_ab": 131_072, "tied_ab_uv": 524_544, "tied_b_u": 98_560,
    "tied_b": 98_304, "tied_a_uv": 426_240, "tied_a": 32_768, "vera": 393_472,
}


@pytest.mark.parametrize("preset,params", TABLE1_R8.items())
def test_table1_counts_on_llama2_7b(preset, params):
    s = plan_summary(compose("plan", ["model=llama2_7b", "method=tied_lora", f"method.preset={preset}", "method.r=8"]))
    assert s["trainable_params"] == params


def test_ties_only_across_the_planned_layers():
    s = plan_summary(compose("plan", ["model=llama2_7b", "method=tied_lora", "layer_ratio=[tied_lora:8,none:24]"]))
    assert s["trainable_params"] == 4 * 4096 * 8 + 8 * (8 + 3 * 4096)


def build(case, model="tiny"):
    cfg = case_cfg(model, case)
    m, _ = load_model(cfg.model)
    return cfg, m, apply_plan(m, plan_for(cfg))


def test_tied_tensors_are_one_object_and_get_the_sum_of_layer_gradients():
    _, model, adapters = build("tied_lora_tied_ab")  # B = 0: every layer sees base activations
    shared = adapters.shared["tied_lora"]
    mods = list(adapters.adapter_modules())
    assert all(m.mats is shared for m in mods) and len(mods) == 4
    names = [n for n, _ in adapters.named_parameters()]
    assert names.count("shared.tied_lora.B") == 1 and sum("B" in n for n in names) == 1
    ids = torch.randint(3, 259, (2, 10))

    def grad_b(active):
        adapters.set_response_scale(0.0)
        adapters.set_response_scale(1.0, layers=active)
        shared.B.grad = None
        model(input_ids=ids, labels=ids).loss.backward()
        return shared.B.grad.clone()

    total = grad_b([0, 1, 2, 3])
    assert total.abs().sum() > 0
    torch.testing.assert_close(total, sum(grad_b([i]) for i in range(4)), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_frozen_parts_stay_fixed_and_are_not_saved(preset, tmp_path):
    cfg = compose("plan", ["model=tiny", "method=tied_lora", f"method.preset={preset}"])
    model, _ = load_model(cfg.model)
    adapters = apply_plan(model, plan_for(cfg))
    frozen = {n: b.clone() for n, b in adapters.named_buffers()}
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(3, 259, (2, 10))
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    for n, b in adapters.named_buffers():
        assert torch.equal(b, frozen[n])
    save_adapter(model, tmp_path)
    with safe_open(str(tmp_path / ADAPTER_FILE), framework="pt") as f:
        saved = set(f.keys())
    assert saved == {n for n, _ in adapters.named_parameters()}
    if preset == "vera":
        assert all(k.endswith((".u", ".v")) for k in saved)
    model.eval()
    fresh, _ = load_model(cfg.model)
    load_adapter(fresh, tmp_path)
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids).logits, model(input_ids=ids).logits)


@pytest.mark.parametrize("model_name", ["tiny", "tiny_gptj"])
@pytest.mark.parametrize("preset", ["lora", "tied_ab_uv", "vera", "tied_b"])
def test_merged_and_unmerged_outputs_agree(model_name, preset):
    cfg = compose("plan", [f"model={model_name}", "method=tied_lora", f"method.preset={preset}"])
    model, _ = load_model(cfg.model)
    adapters = apply_plan(model, plan_for(cfg))
    with torch.no_grad():
        for p in adapters.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    ids = torch.randint(3, 259, (2, 10))
    base_w = {n: p.detach().clone() for n, p in model.named_parameters() if "q_proj" in n}
    unmerged, merged, again = merge_roundtrip(model, adapters, ids)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    torch.testing.assert_close(again, unmerged, atol=1e-5, rtol=0)
    for n, p in model.named_parameters():
        if n in base_w:
            torch.testing.assert_close(p, base_w[n], atol=1e-6, rtol=0)


def test_merge_refuses_unmergeable_modules():
    _, _, adapters = build("hlpt")
    with pytest.raises(ValueError, match="cannot be merged"):
        adapters.merge()


def test_method_recipe_sets_the_training_defaults():
    from layerpeft.train.loop import recipe, resolve_lr

    cfg = compose("train", ["method=tied_lora"])
    assert (recipe(cfg, "weight_decay"), recipe(cfg, "schedule"), recipe(cfg, "warmup_steps")) == (0.01, "cosine", 50)
    assert resolve_lr(cfg) == 1e-4
    lora = compose("train", ["method=lora", "train.warmup_steps=7"])
    assert (recipe(lora, "weight_decay"), recipe(lora, "schedule"), recipe(lora, "warmup_steps")) == (0.0, "linear", 7)


def test_frozen_random_matrices_follow_the_run_seed():
    """A seed sweep varies VeRA's frozen A and B (they are drawn from the run's seed, not a fixed one)."""
    from layerpeft import apply_plan
    from layerpeft.commands.plan import plan_for
    from layerpeft.config import compose
    from layerpeft.models.loading import load_model

    def frozen(seed):
        cfg = compose("train", ["model=tiny", "method=tied_lora", "method.preset=vera", f"seed={seed}"])
        model, _ = load_model(cfg.model)
        return apply_plan(model, plan_for(cfg)).shared["tied_lora"].A.clone()

    assert torch.equal(frozen(3), frozen(3)) and not torch.equal(frozen(3), frozen(4))
