"""Integration on the real SmolLM2-135M-Instruct (packaged GGUF, converted once)."""

from __future__ import annotations

import pytest
import torch

from layerpeft import apply_plan
from layerpeft.commands.plan import plan_for
from layerpeft.config import compose
from layerpeft.models.loading import load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    cfg = compose("plan", ["model=smollm2_135m", "method=hlpt"])
    model, tok = load_model(cfg.model)
    return cfg, model, tok


def test_hlpt_on_smollm2_trains_and_loss_falls(smol):
    cfg, model, tok = smol
    adapters = apply_plan(model, plan_for(cfg))
    assert [s.size for s in adapters.plan.segments] == [23, 7]
    # 23 × (8·1536 + 576·8 + 1537) + 7 × (2·20·3·64 + 577)
    assert adapters.num_params() == 23 * 18_433 + 7 * 8_257
    texts = [
        "Below is an instruction.\n\n### Instruction:\nAdd 2 and 3.\n\n### Response:\nThe answer is 5.",
        "Below is an instruction.\n\n### Instruction:\nWhat is 4 times 6?\n\n### Response:\nThe answer is 24.",
    ]
    batch = tok(texts, return_tensors="pt", padding=True)
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(6):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    model.eval()
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0], losses
