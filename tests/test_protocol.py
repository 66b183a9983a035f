"""The evaluation protocols. The parity expectations are written from LLM-Adapters' evaluate.py /
commonsense_evaluate.py by hand (prompt string, split on "### Response:", first capital A-E,
last number), not from this implementation."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

import layerpeft.eval.generate as gen
from layerpeft.eval.answers import AnswerSpec, extract, is_correct
from layerpeft.eval.protocol import PROTOCOLS, resolve
from layerpeft.models.tiny import byte_tokenizer

# evaluate.py's generate_prompt(instruction) with no input, as its source spells it.
EVALUATE_PY = ("Below is an instruction that describes a task. Write a response that appropriately completes "
               "the request. \n\n                ### Instruction:\n                Q?\n\n"
               "                ### Response:\n                ")
# the training template (LLM-Adapters' Alpaca prompt), used by strict
TRAINING = ("Below is an instruction that describes a task. Write a response that appropriately completes "
            "the request.\n\n### Instruction:\nQ?\n\n### Response:\n")


def test_each_protocol_builds_its_own_prompt():
    assert PROTOCOLS["parity"].prompt({"instruction": "Q?", "input": "ignored by evaluate.py"}) == EVALUATE_PY
    assert PROTOCOLS["strict"].prompt({"instruction": "Q?", "input": ""}) == TRAINING


SPECS = {"GSM8K": AnswerSpec("number"), "SVAMP": AnswerSpec("number"), "AddSub": AnswerSpec("number"),
         "AQuA": AnswerSpec("option"), "piqa": AnswerSpec("word", ("solution1", "solution2"))}


def scored(protocol: str, set_name: str, continuation: str, gold: str, eos: bool = True):
    """(response, prediction, correct) of ``continuation`` decoded after the protocol's prompt."""
    tok = byte_tokenizer()
    p = PROTOCOLS[protocol]
    prompt_ids = tok(p.prompt({"instruction": "Q?"}))["input_ids"]
    new_ids = tok(continuation, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if eos else [])
    spec = SPECS[set_name]
    response = p.response(tok, spec, prompt_ids, new_ids)
    return response, extract(spec, response, protocol), is_correct(spec, response, gold, protocol)


def test_parity_scores_an_invented_next_question_and_strict_cuts_it():
    rambling = " The answer is 5.\n\n### Instruction:\nWhat is 2 plus 7?\n\n### Response:\nThe answer is 9."
    response, pred, ok = scored("parity", "GSM8K", rambling, "5")
    # evaluate.py: everything between the prompt's "### Response:" and the next one; last number 7
    assert response == "The answer is 5.\n\n### Instruction:\nWhat is 2 plus 7?"
    assert (pred, ok) == (7.0, False)
    response, pred, ok = scored("strict", "GSM8K", rambling, "5")
    assert (response, pred, ok) == ("The answer is 5.", 5.0, True)


def test_parity_math_keeps_special_tokens_and_commonsense_drops_them():
    response, _, _ = scored("parity", "SVAMP", " The answer is 12.", "12")
    assert response == "The answer is 12.</s>"  # evaluate.py: tokenizer.decode(s) without skipping
    response, pred, ok = scored("parity", "piqa", " the correct answer is solution2", "solution2")
    assert (response, pred, ok) == ("the correct answer is solution2", "solution2", True)


def test_parity_aqua_takes_the_first_capital_a_to_e():
    _, pred, ok = scored("parity", "AQuA", " Each box holds 4. The answer is (D).", "D")
    assert (pred, ok) == ("E", False)  # "Each"
    _, pred, ok = scored("strict", "AQuA", " Each box holds 4. The answer is (D).", "D")
    assert (pred, ok) == ("D", True)


def test_parity_with_several_numbers_and_no_number():
    _, pred, ok = scored("parity", "AddSub", " 3 + 4 = 7, then 7 * 2 = 14", "14", eos=False)
    assert (pred, ok) == (14.0, True)
    _, pred, ok = scored("parity", "AddSub", " I cannot tell.", "14")
    assert (pred, ok) == (None, False)  # evaluate.py: inf, never within 1e-3


def test_parity_decodes_as_the_reference_scripts_or_refuses():
    cfg = OmegaConf.create({"mode": "parity", "num_beams": None, "max_new_tokens": None})
    protocol, beams, new = resolve(cfg, 256)
    assert (protocol.name, beams, new, protocol.stop_at_markers) == ("parity", 4, 256, False)
    assert resolve(OmegaConf.merge(cfg, {"mode": "strict"}), 32)[1:] == (1, 32)
    with pytest.raises(ValueError, match="eval.num_beams=1: eval.mode=parity decodes with LLM-Adapters' 4 beams"):
        resolve(OmegaConf.merge(cfg, {"num_beams": 1}), 256)
    with pytest.raises(ValueError, match="eval.max_new_tokens=64: eval.mode=parity decodes the reference"):
        resolve(OmegaConf.merge(cfg, {"max_new_tokens": 64}), 256)


def test_evaluate_in_parity_mode_end_to_end(monkeypatch, tmp_path):
    """evaluate() decodes parity prompts with 4 beams and no stop strings, and scores the split text."""
    tok = byte_tokenizer()
    calls = []

    def fake_generate(model, tokenizer, prompts, batch_size, max_new_tokens, num_beams, stop_at_markers,
                      on_done=None, **kw):
        calls.append((prompts, max_new_tokens, num_beams, stop_at_markers))
        cont = " The answer is 5.\n\n### Instruction:\nAdd 1 and 1.\n\n### Response:\n2"
        out = [(tokenizer(p)["input_ids"], tokenizer(cont, add_special_tokens=False)["input_ids"]) for p in prompts]
        for i, (p, new) in enumerate(out):
            on_done(i, p, new)
        return out

    monkeypatch.setattr(gen, "generate", fake_generate)
    model = torch.nn.Linear(1, 1)
    cfg = OmegaConf.create({"batch_size": 2, "max_new_tokens": None, "num_beams": None, "limit": None,
                            "mode": "parity"})
    out = gen.evaluate(model, tok, {"SVAMP": [{"instruction": "Q?", "answer": "5"}]}, {"SVAMP": AnswerSpec("number")},
                       cfg, tmp_path / "p.jsonl", dataset_max_new_tokens=256)
    assert calls == [([EVALUATE_PY], 256, 4, False)]
    assert out["datasets"]["SVAMP"]["correct"] == 0  # the invented question's "1" is the last number
    assert (out["scoring"], out["num_beams"]) == ("parity", 4)
