"""Batched, left-padded, cached generation gives the one-prompt-at-a-time greedy answers."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import case_cfg
from layerpeft import apply_plan
from layerpeft.commands.plan import plan_for
from layerpeft.data.prompts import prompt_text
from conftest import METHOD_CASES, TINY_MODELS, UNSUPPORTED
from layerpeft.eval.batching import continuous_greedy
from layerpeft.eval.generate import generate
from layerpeft.eval.protocol import cut_at_markers
from layerpeft.models.loading import load_model

PROMPTS = [prompt_text(q) for q in ("Add 2 and 3.", "Ben has 14 marbles and gives away 6. How many are left?",
                                    "x", "Multiply 7 by 8, then subtract 5.")]


def perturbed_model(case, model_name="tiny", base_std=0.1):
    cfg = case_cfg(model_name, case)
    model, tok = load_model(cfg.model)
    with torch.no_grad():  # at its small init the tiny model repeats one token for every prompt
        for p in model.parameters():
            p.add_(torch.randn_like(p) * base_std)
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


MORE = PROMPTS + [prompt_text(q) for q in ("Subtract 4 from 9.", "A train leaves at 3.", "Count to 5.",
                                            "What is 12 divided by 4?")]


@pytest.mark.parametrize("model_name,case", [(m, c) for m in TINY_MODELS for c in METHOD_CASES
                                             if (m, c) not in UNSUPPORTED])
def test_continuous_batching_equals_one_prompt_at_a_time(model_name, case):
    """Rows end at different steps and waiting prompts take their places (cache, mask, positions
    and the adapters' per-sequence state — prefix gates, PARA's vectors — follow), and every
    answer is the one-prompt-at-a-time greedy answer of transformers' ``generate``."""
    steps = 10
    # a random tiny model may repeat one token for every prompt: draw again, with more noise
    for seed, base_std in [(s, std) for std in (0.1, 0.3, 0.5) for s in range(3)]:
        torch.manual_seed(seed)
        model, tok = perturbed_model(case, model_name, base_std)
        prompts = [tok(p)["input_ids"] for p in MORE]
        alone = [model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                max_new_tokens=steps, do_sample=False, eos_token_id=None,
                                pad_token_id=tok.pad_token_id)[0, len(p):].tolist() for p in prompts]
        # An "EOS" that ends the answers at different steps (some early).
        eos = next((t for t in sorted({t for row in alone for t in row})
                    if 0 < min(first_end(r, t) for r in alone) < max(first_end(r, t) for r in alone)), None)
        if eos is not None:
            break
    assert eos is not None, "premise: the tiny model's continuations differ enough to end at different steps"
    sizes = []
    hook = model.register_forward_pre_hook(lambda _m, _a, kw: sizes.append(tuple(kw["input_ids"].shape)),
                                           with_kwargs=True)
    ours = continuous_greedy(model, prompts, rows=3, max_new_tokens=steps, eos_token_id=eos, pad_id=tok.pad_token_id)
    hook.remove()
    assert ours == [row[: first_end(row, eos) + 1] for row in alone]  # ending with the EOS they emitted
    prefills = [s for s in sizes if s[1] > 1]
    assert len(prefills) > 1 and max(b for b, _ in sizes) <= 3  # freed rows were refilled, never more than 3


def test_interrupted_evaluation_resumes_with_its_finished_sets(tmp_path, monkeypatch):
    """Predictions are written as each set completes; evaluating into the same file again decodes
    only the sets that are missing, and gives the same results as one uninterrupted evaluation."""
    from omegaconf import OmegaConf

    import layerpeft.eval.generate as gen
    from layerpeft.eval.answers import AnswerSpec

    model, tok = perturbed_model("lora")
    evals = {"SVAMP": [{"instruction": q, "answer": "5"} for q in ("Add 2 and 3.", "x", "Take 1 from 6.")],
             "AddSub": [{"instruction": q, "answer": "8"} for q in ("Add 4 and 4.", "Multiply 2 by 4.")]}
    cfg = OmegaConf.create({"batch_size": 2, "max_new_tokens": 6, "num_beams": None, "limit": None, "mode": "strict"})
    answers = {"SVAMP": AnswerSpec("number"), "AddSub": AnswerSpec("number")}
    full = gen.evaluate(model, tok, evals, answers, cfg, tmp_path / "full.jsonl")

    real, decoded = gen.generate, []

    def stop_at_addsub(model, tok, prompts, *args, on_done=None, **kw):
        def answered(i, prompt_ids, new_ids):
            if i >= 3:  # the stream is set after set: answers 3 and 4 are AddSub's
                raise KeyboardInterrupt  # the process is stopped while decoding the second set
            on_done(i, prompt_ids, new_ids)

        return real(model, tok, prompts, *args, on_done=answered, **kw)

    path = tmp_path / "predictions.jsonl"
    monkeypatch.setattr(gen, "generate", stop_at_addsub)
    with pytest.raises(KeyboardInterrupt):
        gen.evaluate(model, tok, evals, answers, cfg, path)
    assert [json.loads(line)["dataset"] for line in path.read_text().splitlines()] == ["SVAMP"] * 3

    def counting(model, tok, prompts, *args, **kw):
        decoded.extend(prompts)
        return real(model, tok, prompts, *args, **kw)

    monkeypatch.setattr(gen, "generate", counting)
    resumed = gen.evaluate(model, tok, evals, answers, cfg, path)
    assert len(decoded) == 2 and all("Add 4" in p or "Multiply 2" in p for p in decoded)
    assert resumed["datasets"] == full["datasets"]
    assert path.read_text() == (tmp_path / "full.jsonl").read_text()

    decoded.clear()  # other decoding settings: nothing is reused
    gen.evaluate(model, tok, evals, answers, OmegaConf.merge(cfg, {"max_new_tokens": 4}), path)
    assert len(decoded) == 5


@pytest.mark.parametrize("case", ["hlpt", "para"])
def test_continuous_batching_makes_room_for_longer_prompts(case, monkeypatch):
    """A waiting prompt longer than the filled columns pads every row on the left; a full buffer
    drops columns that are padding everywhere, or grows."""
    import layerpeft.eval.batching as batching

    shifts = []
    real = batching._Rows._shift
    monkeypatch.setattr(batching._Rows, "_shift", lambda self, by, cap: (shifts.append(by), real(self, by, cap)))
    torch.manual_seed(0)
    model, tok = perturbed_model(case)
    prompts = [torch.randint(3, 259, (n,)).tolist() for n in (6, 7, 40, 5, 30, 9)]
    alone = [model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                            max_new_tokens=12, do_sample=False, eos_token_id=None,
                            pad_token_id=tok.pad_token_id)[0, len(p):].tolist() for p in prompts]
    ours = continuous_greedy(model, prompts, rows=2, max_new_tokens=12, eos_token_id=None, pad_id=tok.pad_token_id)
    assert ours == alone
    assert any(by > 0 for by in shifts) and any(by < 0 for by in shifts)
