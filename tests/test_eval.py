"""Batched, left-padded, cached generation gives the one-prompt-at-a-time greedy answers."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import case_cfg
from layerpeft import apply_plan
from layerpeft.commands.plan import plan_for
from layerpeft.data.prompts import prompt_text
from layerpeft.eval.generate import generate, greedy_decode
from layerpeft.eval.protocol import cut_at_markers
from layerpeft.models.loading import load_model

PROMPTS = [prompt_text(q) for q in ("Add 2 and 3.", "Ben has 14 marbles and gives away 6. How many are left?",
                                    "x", "Multiply 7 by 8, then subtract 5.")]


def perturbed_model(case):
    cfg = case_cfg("tiny", case)
    model, tok = load_model(cfg.model)
    with torch.no_grad():  # at its small init the tiny model repeats one token for every prompt
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    adapters = apply_plan(model, plan_for(cfg))
    with torch.no_grad():  # make the adapters (and HLPT's prompt-pooled gates) matter
        for p in adapters.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model, tok


@pytest.mark.parametrize("case", ["lora", "hlpt", "prefix", "h2lpt", "para", "prompt_tuning"])
def test_batched_generation_equals_single_prompt_generation(case):
    model, tok = perturbed_model(case)
    batched = generate(model, tok, PROMPTS, batch_size=4, max_new_tokens=12)
    single = [generate(model, tok, [p], batch_size=1, max_new_tokens=12)[0] for p in PROMPTS]
    assert batched == single
    beams = generate(model, tok, PROMPTS[:2], batch_size=2, max_new_tokens=6, num_beams=3)
    assert beams == [generate(model, tok, [p], 1, 6, num_beams=3)[0] for p in PROMPTS[:2]]


def test_response_is_cut_at_the_next_template_section():
    assert cut_at_markers(" The answer is 5.\n\n### Instruction:\nMore") == "The answer is 5."


def first_end(tokens: list[int], eos: int) -> int:
    return tokens.index(eos) if eos in tokens else len(tokens)


@pytest.mark.parametrize("case", ["lora", "hlpt", "para", "prompt_tuning"])
def test_greedy_decode_drops_finished_rows_and_matches_generate(case):
    """Rows leave the batch when they end (cache, mask and PARA/gate state follow) and every
    row's tokens stay those of transformers' greedy ``generate``."""
    model, tok = perturbed_model(case)
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    steps = 12
    free = model.generate(**enc, max_new_tokens=steps, do_sample=False, eos_token_id=None,
                          pad_token_id=tok.pad_token_id)[:, enc.input_ids.shape[1]:].tolist()
    # An "EOS" that ends some rows early and leaves at least one running: the batch must shrink.
    eos = next((t for t in sorted({t for row in free for t in row})
                if 0 < min(first_end(r, t) for r in free) < max(first_end(r, t) for r in free) == steps), None)
    assert eos is not None, "premise: the tiny model's continuations differ enough to end at different steps"
    sizes = []
    model.register_forward_pre_hook(lambda _m, _a, kw: sizes.append(kw["input_ids"].shape[0]), with_kwargs=True)
    ours = greedy_decode(model, enc.input_ids, enc.attention_mask, steps, eos)
    assert sizes[0] == len(PROMPTS) and min(sizes) < len(PROMPTS)
    assert sizes == sorted(sizes, reverse=True)
    hf = model.generate(**enc, max_new_tokens=steps, do_sample=False, eos_token_id=eos,
                        pad_token_id=tok.pad_token_id)[:, enc.input_ids.shape[1]:].tolist()
    # rows end with the EOS they emitted
    assert ours == [row[: first_end(row, eos) + 1] for row in hf]
    assert ours == [row[: first_end(row, eos) + 1] for row in free]


def test_interrupted_evaluation_resumes_with_its_finished_sets(tmp_path, monkeypatch):
    """Predictions are written after each set; evaluating into the same file again decodes only
    the sets that are missing, and gives the same results as one uninterrupted evaluation."""
    from omegaconf import OmegaConf

    import layerpeft.eval.generate as gen

    model, tok = perturbed_model("lora")
    evals = {"SVAMP": [{"instruction": q, "answer": "5"} for q in ("Add 2 and 3.", "x", "Take 1 from 6.")],
             "AddSub": [{"instruction": q, "answer": "8"} for q in ("Add 4 and 4.", "Multiply 2 by 4.")]}
    cfg = OmegaConf.create({"batch_size": 2, "max_new_tokens": 6, "num_beams": None, "limit": None, "mode": "strict"})
    full = gen.evaluate(model, tok, evals, cfg, tmp_path / "full.jsonl")

    real, decoded = gen.generate, []

    def stop_at_addsub(model, tok, prompts, *args, desc="", **kw):
        if desc == "eval AddSub":
            raise KeyboardInterrupt  # the process is stopped while decoding the second set
        return real(model, tok, prompts, *args, desc=desc, **kw)

    path = tmp_path / "predictions.jsonl"
    monkeypatch.setattr(gen, "generate", stop_at_addsub)
    with pytest.raises(KeyboardInterrupt):
        gen.evaluate(model, tok, evals, cfg, path)
    assert [json.loads(line)["dataset"] for line in path.read_text().splitlines()] == ["SVAMP"] * 3

    def counting(model, tok, prompts, *args, desc="", **kw):
        decoded.append(desc)
        return real(model, tok, prompts, *args, desc=desc, **kw)

    monkeypatch.setattr(gen, "generate", counting)
    resumed = gen.evaluate(model, tok, evals, cfg, path)
    assert decoded == ["eval AddSub"]
    assert resumed["datasets"] == full["datasets"]
    assert path.read_text() == (tmp_path / "full.jsonl").read_text()

    decoded.clear()  # other decoding settings: nothing is reused
    gen.evaluate(model, tok, evals, OmegaConf.merge(cfg, {"max_new_tokens": 4}), path)
    assert decoded == ["eval SVAMP", "eval AddSub"]
