"""PARA: sizes, the paper's count, per-sequence vectors from each sequence's own last prompt token."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from conftest import case_cfg
from layerpeft import apply_plan
from layerpeft.commands.plan import plan_for
from layerpeft.models.loading import load_model

EXE = str(Path(sys.executable).with_name("layerpeft"))


def test_plan_count_on_llama2_7b_says_which_count_it_is():
    p = subprocess.run([EXE, "plan", "model=llama2_7b", "method=para"], capture_output=True, text=True, timeout=120)
    out = json.loads(p.stdout.strip().splitlines()[-1])
    # 32 × (4096·12 + 12·(4096 + 4096 + 11008) + (4096 + 4096 + 11008))
    assert out["trainable_params"] == 9_560_064
    assert "without it 8,945,664 (the paper's figure)" in p.stdout


def build():
    cfg = case_cfg("tiny", "para")
    model, _ = load_model(cfg.model)
    adapters = apply_plan(model, plan_for(cfg))
    with torch.no_grad():
        for p in adapters.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model, adapters


def test_gqa_sizes():
    _, adapters = build()
    m = next(adapters.adapter_modules())
    assert m.sizes == {"q": 64, "v": 32, "up": 128}  # tiny: 4 heads, 2 kv heads of 16, FFN 128


def test_each_sequence_gets_the_vectors_of_its_own_last_prompt_token():
    model, _ = build()
    a, b = torch.randint(3, 259, (1, 12)), torch.randint(3, 259, (1, 9))
    prompts = (5, 7)  # different prompt lengths, right-padded batch as in training
    batch = torch.zeros(2, 12, dtype=torch.long)
    batch[0], batch[1, :9] = a[0], b[0]
    attn = torch.zeros(2, 12, dtype=torch.long)
    attn[0], attn[1, :9] = 1, 1
    prompt = torch.stack([torch.arange(12) < prompts[0], torch.arange(12) < prompts[1]])
    with torch.no_grad():
        together = model(input_ids=batch, attention_mask=attn, prompt_mask=prompt).logits
        alone_a = model(input_ids=a, prompt_mask=prompt[:1]).logits
        alone_b = model(input_ids=b, prompt_mask=prompt[1:, :9]).logits
        moved = model(input_ids=a, prompt_mask=torch.arange(12)[None] < 6).logits
    torch.testing.assert_close(together[0], alone_a[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(together[1, :9], alone_b[0], atol=1e-5, rtol=0)
    assert not torch.allclose(moved, alone_a, atol=1e-4)  # the prompt boundary matters
