"""The generic contract, for every method × tiny model family (peft's TEST_CASES idea)."""

from __future__ import annotations

import pytest
import torch

from conftest import METHOD_CASES, TINY_MODELS, UNSUPPORTED, case_cfg, merge_roundtrip
from layerpeft import apply_plan, load_adapter, save_adapter
from layerpeft.commands.plan import plan_for
from layerpeft.methods import MODULE_KINDS
from layerpeft.models.loading import load_model
from layerpeft.peft_model import ADAPTER_FILE

CASES = [(m, c) for m in TINY_MODELS for c in METHOD_CASES if (m, c) not in UNSUPPORTED]
T, PROMPT = 14, 8


def build(model_name, case):
    cfg = case_cfg(model_name, case)
    model, _ = load_model(cfg.model)
    ids = torch.randint(3, model.config.vocab_size, (2, T))
    with torch.no_grad():
        base = model(input_ids=ids).logits
    adapters = apply_plan(model, plan_for(cfg))
    return cfg, model, adapters, ids, base


def perturb(adapters, std=0.2):
    """Move every trained tensor off its initial value (LoRA's zero B, IA3's ones, full
    fine-tuning's base weights, …)."""
    with torch.no_grad():
        for p in adapters.trainable().values():
            p.add_(torch.randn_like(p) * std)


def prompt_mask(batch=2, length=T, prompt=PROMPT):
    return (torch.arange(length) < prompt).expand(batch, length)


@pytest.mark.parametrize("model_name,case", CASES)
def test_zero_init_leaves_logits_unchanged(model_name, case):
    _, model, adapters, ids, base = build(model_name, case)
    if not all(m.zero_init for m in adapters.adapter_modules()):
        pytest.skip("not an identity method at init (random prefix tokens or random A, B with u = v = 1)")
    with torch.no_grad():
        out = model(input_ids=ids).logits
    assert torch.allclose(out, base, atol=1e-6, rtol=0)


@pytest.mark.parametrize("model_name,case", CASES)
def test_only_plan_parameters_change_in_training(model_name, case):
    _, model, adapters, ids, _ = build(model_name, case)
    trained = adapters.trainable()
    frozen = {n: p for n, p in model.named_parameters() if not n.startswith("layerpeft.") and n not in adapters.base_params}
    base_before = {n: p.detach().clone() for n, p in frozen.items()}
    adapter_before = {n: p.detach().clone() for n, p in trained.items()}
    assert all(p.requires_grad for p in trained.values())
    assert not any(p.requires_grad for p in frozen.values())
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    for _ in range(3):
        loss = model(input_ids=ids, labels=ids, prompt_mask=prompt_mask()).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    for n, p in frozen.items():
        assert torch.equal(p, base_before[n]), f"base parameter {n} changed"
    unchanged = [n for n, p in trained.items() if torch.equal(p, adapter_before[n])]
    assert not unchanged, f"trainable parameters that did not train: {unchanged}"


@pytest.mark.parametrize("model_name,case", CASES)
def test_response_scale_zero_restores_base(model_name, case):
    if case == "full":
        pytest.skip("full fine-tuning has no response scale (test_full_fine_tuning_has_no_response_scale)")
    _, model, adapters, ids, base = build(model_name, case)
    perturb(adapters)
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, base, atol=1e-4)
        adapters.set_response_scale(0.0)
        assert torch.allclose(model(input_ids=ids).logits, base, atol=1e-6, rtol=0)


@pytest.mark.parametrize("model_name,case", CASES)
def test_teacher_forced_equals_cached_decoding(model_name, case):
    _, model, adapters, ids, _ = build(model_name, case)
    perturb(adapters)
    with torch.no_grad():
        full = model(input_ids=ids, prompt_mask=prompt_mask()).logits
        out = model(input_ids=ids[:, :PROMPT], use_cache=True)
        cache, steps = out.past_key_values, [out.logits[:, -1]]
        for t in range(PROMPT, T - 1):
            out = model(input_ids=ids[:, t : t + 1], cache=cache, use_cache=True)
            cache = out.past_key_values
            steps.append(out.logits[:, -1])
    cached = torch.stack(steps, dim=1)
    torch.testing.assert_close(cached, full[:, PROMPT - 1 : T - 1], atol=2e-5, rtol=0)


@pytest.mark.parametrize("model_name,case", CASES)
@pytest.mark.parametrize("with_prompt_mask", [True, False], ids=["prompt_mask", "plain_forward"])
def test_every_module_is_causal(model_name, case, with_prompt_mask):
    """Changing token k changes no logit before k: not inside the prompt (the prefix gate and
    PARA read the prompt), not in a plain ``model(ids)`` call (the whole input is the prompt)."""
    _, model, adapters, ids, _ = build(model_name, case)
    perturb(adapters, std=0.5)
    extra = {"prompt_mask": prompt_mask()} if with_prompt_mask else {}
    with torch.no_grad():
        before = model(input_ids=ids, **extra).logits
        for k in (3, PROMPT - 1, PROMPT + 2):
            changed = ids.clone()
            changed[:, k] = (changed[:, k] + 7) % model.config.vocab_size
            after = model(input_ids=changed, **extra).logits
            torch.testing.assert_close(after[:, :k], before[:, :k], atol=1e-6, rtol=0)
            assert not torch.allclose(after[:, k], before[:, k])  # the change itself is seen


@pytest.mark.parametrize("model_name", TINY_MODELS)
def test_prefix_gate_reads_only_the_prompt(model_name):
    """Negative control for the test above: the gate is pooled over the prompt, not the response."""
    _, model, adapters, ids, _ = build(model_name, "hlpt")
    perturb(adapters, std=1.0)
    with torch.no_grad():
        with_prompt = model(input_ids=ids, prompt_mask=prompt_mask()).logits
        whole = model(input_ids=ids).logits
    assert not torch.allclose(with_prompt[:, PROMPT:], whole[:, PROMPT:], atol=1e-5)


@pytest.mark.parametrize("model_name,case", CASES)
def test_save_load_roundtrip(model_name, case, tmp_path):
    cfg, model, adapters, ids, _ = build(model_name, case)
    perturb(adapters)
    with torch.no_grad():
        expected = model(input_ids=ids, prompt_mask=prompt_mask()).logits
    save_adapter(model, tmp_path)
    assert (tmp_path / ADAPTER_FILE).is_file()
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))
    fresh, _ = load_model(cfg.model)
    load_adapter(fresh, tmp_path)
    with torch.no_grad():
        got = fresh(input_ids=ids, prompt_mask=prompt_mask()).logits
    assert torch.equal(got, expected)


@pytest.mark.parametrize("case", ["hlpt", "prefix", "para"])
def test_seed_fixes_the_initialisation(case):
    """The same seed gives the same random initialisation; another seed a different one."""
    cfg = case_cfg("tiny", case)

    def initial(seed, draws_before):
        model, _ = load_model(cfg.model)
        torch.rand(draws_before)  # what drew from the generator before must not matter
        return {n: p.clone() for n, p in apply_plan(model, plan_for(cfg), seed=seed).trainable().items()}

    a, again, other = initial(7, 1), initial(7, 5), initial(8, 1)
    assert all(torch.equal(a[n], again[n]) for n in a)
    assert any(not torch.equal(a[n], other[n]) for n in a)


def test_prefix_reparam_folds_to_the_same_function():
    _, model, adapters, ids, _ = build("tiny", "prefix_reparam")
    with torch.no_grad():
        before = model(input_ids=ids).logits
        adapters.fold()
        after = model(input_ids=ids).logits
    assert not any("mlp" in n for n, _ in adapters.named_parameters())
    assert adapters.plan.options["prefix"]["reparam"] is False
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)


def test_prefix_does_not_shift_positions():
    """A prefix whose keys can never win attention (scale → 0) leaves outputs as the base."""
    _, model, adapters, ids, base = build("tiny", "prefix")
    adapters.set_response_scale(1e-30)
    with torch.no_grad():
        out = model(input_ids=ids).logits
    torch.testing.assert_close(out, base, atol=1e-5, rtol=0)


def test_every_module_kind_is_covered_by_the_matrix():
    covered = set()
    for case in METHOD_CASES:
        cfg = case_cfg("tiny_gptj", case)
        covered |= set(plan_for(cfg).kinds)
    assert covered == set(MODULE_KINDS)


def test_bitfit_refuses_a_model_without_biases():
    from layerpeft.plan import PlanError

    cfg = case_cfg("tiny", "bitfit")
    model, _ = load_model(cfg.model)
    with pytest.raises(PlanError, match="bitfit: layer 0 of this llama model has no bias terms"):
        apply_plan(model, plan_for(cfg))


@pytest.mark.parametrize("model_name,case", CASES)
def test_merge_folds_the_modules_into_the_weights_or_says_why_not(model_name, case):
    _, model, adapters, ids, _ = build(model_name, case)
    perturb(adapters)
    refused = adapters.merge_refusals()
    mergeable = {"lora", "lora_all", "lora_qkvud", "dora", "ia3", "hlpt_nogate", "full"} | {
        c for c in METHOD_CASES if c.startswith("tied_lora")}
    if case not in mergeable:
        assert refused
        with pytest.raises(ValueError, match="cannot be merged into the base weights"):
            adapters.merge()
        return
    assert not refused or case == "hlpt_nogate"
    if case == "hlpt_nogate":  # its LoRA part merges; its prefix does not
        assert refused == [next(r for r in refused if r.startswith("prefix"))]
        return
    unmerged, merged, again = merge_roundtrip(model, adapters, ids)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    torch.testing.assert_close(again, unmerged, atol=1e-5, rtol=0)  # W + ΔW - ΔW in float


def test_multi_kind_slots_put_every_kind_in_every_layer():
    cfg = case_cfg("tiny", "unipelt")
    assert plan_for(cfg).layers == [["lora_attn", "prefix", "series"]] * 4
