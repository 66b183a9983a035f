"""Batched, left-padded, cached generation gives the one-prompt-at-a-time greedy answers."""

from __future__ import annotations

import pytest
import torch

from conftest import case_cfg
from layerpeft import apply_plan
from layerpeft.commands.plan import plan_for
from layerpeft.data.prompts import prompt_text
from layerpeft.eval.generate import cut_response, generate
from layerpeft.models.loading import load_model

PROMPTS = [prompt_text(q) for q in ("Add 2 and 3.", "Ben has 14 marbles and gives away 6. How many are left?",
                                    "x", "Multiply 7 by 8, then subtract 5.")]


@pytest.mark.parametrize("case", ["lora", "hlpt", "prefix", "h2lpt", "para", "prompt_tuning"])
def test_batched_generation_equals_single_prompt_generation(case):
    cfg = case_cfg("tiny", case)
    model, tok = load_model(cfg.model)
    adapters = apply_plan(model, plan_for(cfg))
    with torch.no_grad():  # make the adapters (and HLPT's prompt-pooled gates) matter
        for p in adapters.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    batched = generate(model, tok, PROMPTS, batch_size=4, max_new_tokens=12)
    single = [generate(model, tok, [p], batch_size=1, max_new_tokens=12)[0] for p in PROMPTS]
    assert batched == single
    beams = generate(model, tok, PROMPTS[:2], batch_size=2, max_new_tokens=6, num_beams=3)
    assert beams == [generate(model, tok, [p], 1, 6, num_beams=3)[0] for p in PROMPTS[:2]]


def test_response_is_cut_at_the_next_template_section():
    assert cut_response(" The answer is 5.\n\n### Instruction:\nMore") == "The answer is 5."
