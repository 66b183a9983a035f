"""`layerpeft export`: merged models load in plain transformers, peft adapters in peft, with the
run's own logits; plans that are no weight are refused with the reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from layerpeft import load_run
from layerpeft.config import compose
from layerpeft.models.loading import load_model

EXE = str(Path(sys.executable).with_name("layerpeft"))
IDS = torch.randint(3, 259, (2, 14), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """The tiny model saved as a standard directory: a base peft and transformers can load."""
    d = tmp_path_factory.mktemp("base")
    model, tok = load_model(compose("train", ["model=tiny"]).model)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def trained(tmp_path: Path, base_dir: Path, *overrides: str) -> Path:
    run = tmp_path / "run"
    p = subprocess.run([EXE, "train", "model=hf", f"model.name_or_path={base_dir}", "dataset=synthetic_math",
                        "logger=none", "train.max_steps=3", "train.lr=0.05", "train.warmup_steps=0",
                        "train.precision=fp32", "eval.enabled=false", *overrides, f"hydra.run.dir={run}"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return run


def run_logits(run: Path) -> torch.Tensor:
    model, _ = load_run(run)
    with torch.no_grad():
        return model(input_ids=IDS).logits


def export(run: Path, how: str, out: Path):
    return subprocess.run([EXE, "export", str(run), f"--{how}", str(out)], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("method", ["lora", "dora", "ia3", "tied_lora", "vera"])
def test_merged_model_loads_in_transformers_with_the_runs_logits(tmp_path, base_dir, method):
    from transformers import AutoModelForCausalLM

    extra = ["method=tied_lora", "method.preset=vera"] if method == "vera" else [f"method={method}"]
    run = trained(tmp_path, base_dir, *extra)
    out = tmp_path / "merged"
    p = export(run, "merged", out)
    assert p.returncode == 0, p.stdout + p.stderr
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        theirs = merged(input_ids=IDS).logits
    ours = run_logits(run)
    assert not torch.allclose(ours, load_model(compose("train", ["model=tiny"]).model)[0](input_ids=IDS).logits)
    assert (theirs - ours).abs().max().item() < 1e-4


def test_plans_that_are_no_weight_are_refused_with_the_reason(tmp_path, base_dir):
    run = trained(tmp_path, base_dir, "method=hlpt")
    p = export(run, "merged", tmp_path / "out")
    assert p.returncode == 2
    assert "lora_ffn is gated: the gate scales the update by a function of each token" in p.stdout
    assert "a prefix adds key/value columns to attention, not a weight" in p.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", ["lora", "dora", "ia3"])
def test_peft_adapter_loads_with_auto_peft_and_gives_the_runs_logits(tmp_path, base_dir, method):
    from peft import AutoPeftModelForCausalLM

    run = trained(tmp_path, base_dir, f"method={method}")
    out = tmp_path / "peft"
    p = export(run, "peft", out)
    assert p.returncode == 0, p.stdout + p.stderr
    model = AutoPeftModelForCausalLM.from_pretrained(out).eval()  # finds the base by itself
    with torch.no_grad():
        theirs = model(input_ids=IDS).logits
    assert (theirs - run_logits(run)).abs().max().item() < 1e-4


def test_peft_export_needs_a_base_peft_can_load(tmp_path):
    run = tmp_path / "run"
    p = subprocess.run([EXE, "train", "model=tiny", "method=lora", "dataset=synthetic_math", "logger=none",
                        "train.max_steps=1", "eval.enabled=false", f"hydra.run.dir={run}"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0
    p = export(run, "peft", tmp_path / "peft")
    assert p.returncode == 2 and "exists only inside layerpeft" in p.stdout
