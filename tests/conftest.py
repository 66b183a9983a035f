"""Shared fixtures: tiny models built in code, the real SmolLM2 only for `slow` tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from layerpeft.config import compose

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# (method, extra overrides) — every generic test runs over all of these on both tiny families.
METHOD_CASES = {
    "lora": [],
    "prefix": [],
    "prefix_reparam": ["method=prefix", "method.options.prefix.reparam=true"],
    "parallel": [],
    "series": [],
    "series_pfeiffer": ["method=series", "method.options.series.variant=pfeiffer"],
    "ia3": [],
    "hlpt": [],
    "hlpt_nogate": ["method=hlpt", "method.gate=false"],
    "hlpt_attn": ["method=hlpt", "method.bottom=lora_attn"],
    # 3:4:1 leaves no layer for the prefix on 4 layers: give the counts explicitly.
    "h2lpt": ["layer_ratio=[1,2,1]"],
    "para": [],
    "tied_lora": [],  # preset tied_ab_uv
    "tied_lora_lora": ["method=tied_lora", "method.preset=lora"],
    "tied_lora_tied_ab": ["method=tied_lora", "method.preset=tied_ab"],
    "tied_lora_tied_b_u": ["method=tied_lora", "method.preset=tied_b_u"],
    "tied_lora_tied_a_uv": ["method=tied_lora", "method.preset=tied_a_uv"],
    "tied_lora_vera": ["method=tied_lora", "method.preset=vera"],
    "dora": [],
    "lora_all": [],
    "lora_qkvud": [],
    "ln_tuning": [],
    "bitfit": [],  # GPT-J only: LLaMA has no bias terms
    "mam": [],
    "unipelt": [],
    "prompt_tuning": [],  # LLaMA only: GPT-J's positions are a table lookup
    "full": [],
}
#: (model, case) pairs that are refused by design (tested separately).
UNSUPPORTED = {("tiny", "bitfit"), ("tiny_gptj", "prompt_tuning")}
TINY_MODELS = ["tiny", "tiny_gptj"]


def case_overrides(model: str, case: str) -> list[str]:
    extra = METHOD_CASES[case]
    method = [] if any(o.startswith("method=") for o in extra) else [f"method={case}"]
    return [f"model={model}", *method, *extra]


def case_cfg(model: str, case: str):
    return compose("plan", case_overrides(model, case))


def merge_roundtrip(model, adapters, ids):
    """Logits unmerged, merged into the base weights, and unmerged again."""
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        adapters.merge()
        merged = model(input_ids=ids).logits
        adapters.unmerge()
        again = model(input_ids=ids).logits
    return unmerged, merged, again


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
