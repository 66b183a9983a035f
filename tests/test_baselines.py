"""The survey's baselines that do not fit the adapter-module mould: prompt tuning, full FT."""

from __future__ import annotations

import pytest
import torch

from conftest import case_cfg
from layerpeft import apply_plan
from layerpeft.commands.plan import plan_for, plan_summary
from layerpeft.config import compose
from layerpeft.models.loading import load_model
from layerpeft.plan import PlanError
from layerpeft.train.ist import IST


def _build(case, model_name="tiny", extra=()):
    cfg = compose("plan", [f"model={model_name}", f"method={case}", *extra])
    model, _ = load_model(cfg.model)
    return model, apply_plan(model, plan_for(cfg))


def test_prompt_tuning_equals_soft_tokens_in_front_of_the_input():
    """The keys/values trick is exact: same logits as feeding [soft prompt; input] to the base."""
    model, adapters = _build("prompt_tuning")
    soft = adapters.shared["prompt"].embedding
    with torch.no_grad():
        soft.add_(torch.randn_like(soft) * 0.1)
        ids = torch.randint(3, model.config.vocab_size, (2, 9))
        tuned = model(input_ids=ids).logits
        adapters.set_response_scale(0.0)  # the base model, to feed the soft tokens by hand
        embeds = torch.cat([soft.expand(2, -1, -1), model.get_input_embeddings()(ids)], dim=1)
        explicit = model(inputs_embeds=embeds).logits[:, soft.shape[0]:]
    torch.testing.assert_close(tuned, explicit, atol=1e-5, rtol=0)


def test_prompt_tuning_starts_from_vocabulary_embeddings():
    model, adapters = _build("prompt_tuning")
    soft = adapters.shared["prompt"].embedding
    vocab = model.get_input_embeddings().weight
    assert all(any(torch.equal(row, v) for v in vocab) for row in soft)


def test_prompt_tuning_refuses_table_positions():
    cfg = case_cfg("tiny_gptj", "prompt_tuning")
    with pytest.raises(PlanError, match="prompt tuning needs rotary positions .* gptj model"):
        plan_summary(cfg)


def test_full_fine_tuning_has_no_response_scale():
    _, adapters = _build("full")
    with pytest.raises(ValueError, match="full fine-tuning changes the base weights"):
        adapters.set_response_scale(0.0)


def test_full_fine_tuning_can_keep_embeddings_and_head_frozen():
    model, adapters = _build("full", extra=["method.options.full.non_layer=false"])
    assert adapters.base_params and all(".layers." in n for n in adapters.base_params)
    assert not model.get_input_embeddings().weight.requires_grad


@pytest.mark.parametrize("case", ["full", "prompt_tuning"])
def test_ist_refuses_what_is_not_a_per_layer_module(case):
    _, adapters = _build(case)
    with pytest.raises(PlanError, match="IST works on layer-based modules only"):
        IST(adapters, compose("train", []).ist, mu=1.0)


@pytest.mark.parametrize("overrides,expected", [
    # 20 soft tokens × hidden 4096
    (["method=prompt_tuning"], 20 * 4096),
    # every LLaMA-7B weight
    (["method=full"], 6_738_415_616),
    # minus embeddings and LM head (32000 × 4096 each) and the final norm (4096)
    (["method=full", "method.options.full.non_layer=false"], 6_738_415_616 - 2 * 32000 * 4096 - 4096),
    # the top 8 layers only: 8 × (4 × 4096² + 3 × 4096 × 11008 + 2 × 4096)
    (["method=full", "method.options.full.non_layer=false", "layer_ratio=[none:24,full:8]"],
     8 * (4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096)),
])
def test_llama7b_counts(overrides, expected):
    assert plan_summary(compose("plan", ["model=llama7b", *overrides]))["trainable_params"] == expected
