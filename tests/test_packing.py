"""Padding-free training: a packed micro-batch gives the padded batch's loss and gradients for
every method of the matrix, and the chunked loss is transformers' loss."""

from __future__ import annotations

import pytest
import torch

from conftest import METHOD_CASES, TINY_MODELS, UNSUPPORTED, case_cfg
from layerpeft import apply_plan
from layerpeft.commands.plan import plan_for
from layerpeft.data.prompts import collate, pack
from layerpeft.models.loading import load_model
from layerpeft.train.loss import causal_lm_loss

CASES = [(m, c) for m in TINY_MODELS for c in METHOD_CASES if (m, c) not in UNSUPPORTED]


def examples(seed=0):
    """Three sequences of different lengths and prompt lengths, LLM-Adapters-style labels."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, prompt in ((11, 6), (7, 3), (14, 9)):
        ids = torch.randint(3, 259, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": list(ids), "prompt_len": prompt})
    out[1]["labels"][:3] = [-100] * 3  # one example trains only on its response
    return out


def built(model_name, case):
    cfg = case_cfg(model_name, case)
    model, _ = load_model(cfg.model)
    adapters = apply_plan(model, plan_for(cfg), seed=0)
    with torch.no_grad():
        for p in adapters.trainable().values():
            p.add_(torch.randn_like(p) * 0.2)
    adapters.eval()  # no dropout: the two computations must see the same function
    return model, adapters


def loss_and_grads(model, adapters, batch):
    model.zero_grad(set_to_none=True)
    loss = causal_lm_loss(model, batch)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in adapters.trainable().items() if p.grad is not None}


@pytest.mark.parametrize("model_name,case", CASES)
def test_packed_micro_batch_equals_the_padded_one(model_name, case):
    model, adapters = built(model_name, case)
    padded = loss_and_grads(model, adapters, collate(examples(), pad_id=0))
    packed = loss_and_grads(model, adapters, pack(examples()))
    assert packed[0] == pytest.approx(padded[0], rel=1e-5)
    assert padded[1].keys() == packed[1].keys() and padded[1]
    for name, g in padded[1].items():
        torch.testing.assert_close(packed[1][name], g, atol=2e-5, rtol=1e-4, msg=name)


def test_pack_layout():
    batch = pack(examples())
    assert batch["input_ids"].shape == (1, 32)
    assert batch["position_ids"][0].tolist() == list(range(11)) + list(range(7)) + list(range(14))
    starts = [0, 11, 18]
    assert [batch["labels"][0, s].item() for s in starts] == [-100] * 3  # nothing predicted across a boundary
    assert batch["prompt_mask"][0].tolist() == [True] * 6 + [False] * 5 + [True] * 3 + [False] * 4 + [True] * 9 + [False] * 5
    assert "attention_mask" not in batch


@pytest.mark.parametrize("case", ["lora", "full"])  # full: the head's weight (and GPT-J's bias) train too
@pytest.mark.parametrize("model_name", TINY_MODELS)
def test_chunked_loss_is_the_transformers_loss(model_name, case, monkeypatch):
    """Loss and gradients (computed in the forward pass, scaled in the backward) equal
    transformers' full-logits loss, also for a scaled loss as gradient accumulation uses, and
    without grad mode the loss is the same."""
    import layerpeft.train.loss as loss_module

    monkeypatch.setattr(loss_module, "CHUNK", 5)  # several chunks, the last one short
    model, adapters = built(model_name, case)
    batch = collate(examples(), pad_id=0)
    ours = loss_and_grads(model, adapters, batch)
    model.zero_grad(set_to_none=True)
    theirs = model(**batch).loss
    (theirs * 0.3).backward()
    assert ours[0] == pytest.approx(theirs.item(), rel=1e-6)
    head = model.get_output_embeddings()
    assert (case == "full") == any(p is head.weight for p in adapters.trainable().values())
    for name, g in ours[1].items():
        torch.testing.assert_close(g * 0.3, adapters.trainable()[name].grad, atol=1e-6, rtol=1e-5, msg=name)
    model.zero_grad(set_to_none=True)
    (causal_lm_loss(model, batch) * 0.3).backward()
    for name, g in ours[1].items():
        torch.testing.assert_close(g * 0.3, adapters.trainable()[name].grad, atol=1e-6, rtol=1e-5, msg=name)
    with torch.no_grad():
        assert causal_lm_loss(model, batch).item() == pytest.approx(ours[0], rel=1e-6)


def test_sequence_spans_are_the_packed_sequences():
    from layerpeft.train.packed_attention import sequence_spans

    assert sequence_spans(pack(examples())["position_ids"]) == [(0, 11), (11, 18), (18, 32)]
    assert sequence_spans(torch.arange(9)[None]) is None  # one sequence: nothing to split
    assert sequence_spans(collate(examples(), pad_id=0)["input_ids"]) is None  # several rows
    assert sequence_spans(None) is None


@pytest.mark.parametrize("model_name,case", [("tiny", "lora"), ("tiny_gptj", "lora"), ("tiny", "hlpt_nogate"),
                                             ("tiny", "para")])
def test_packed_rows_attend_one_sequence_at_a_time_with_the_whole_rows_result(model_name, case, monkeypatch):
    """The training loss runs each plain layer's attention kernel on one sequence at a time,
    unmasked (the causal kernel), and layers with keys of their own (a prefix) on the whole row;
    loss and gradients are the whole-row computation's, and the model's own attention is back
    afterwards."""
    import contextlib

    import layerpeft.train.loss as loss_module

    model, adapters = built(model_name, case)
    batch = pack(examples())
    before = model.config._attn_implementation
    kernel = torch.nn.functional.scaled_dot_product_attention
    calls = []

    def recording(query, key, value, attn_mask=None, *args, **kwargs):
        calls.append((query.shape[2], attn_mask is None))
        return kernel(query, key, value, attn_mask, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    split = loss_and_grads(model, adapters, batch)
    assert model.config._attn_implementation == before
    extended = sum(1 for kinds in adapters.plan.layers if "prefix" in kinds)  # keys of their own
    plain = adapters.plan.num_layers - extended
    expected = [(11, True), (7, True), (14, True)] * plain + [(32, False)] * extended
    assert plain > 0 and sorted(calls) == sorted(expected)
    calls.clear()
    monkeypatch.setattr(loss_module, "attend_by_sequence", lambda *a: contextlib.nullcontext())
    whole = loss_and_grads(model, adapters, batch)
    assert calls and all(c == (32, False) for c in calls)  # the block-diagonal mask over the row
    assert split[0] == pytest.approx(whole[0], rel=1e-6)
    assert split[1].keys() == whole[1].keys()
    for name, g in whole[1].items():
        torch.testing.assert_close(split[1][name], g, atol=1e-6, rtol=1e-5, msg=name)
