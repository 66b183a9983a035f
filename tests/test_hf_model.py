"""Any Hugging Face causal LM (`model=hf model.name_or_path=…`): plans from its config.json before
any weights load, the same counts as the built-in configs, refused architectures named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

from layerpeft.config import compose
from layerpeft.models.loading import load_model

EXE = str(Path(sys.executable).with_name("layerpeft"))


def plan_json(*overrides: str) -> dict:
    p = subprocess.run([EXE, "plan", *overrides], capture_output=True, text=True, timeout=300,
                       env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """The tiny model and its tokenizer saved as a standard model directory, without a pad token."""
    d = tmp_path_factory.mktemp("tiny_hf")
    model, tok = load_model(compose("train", ["model=tiny"]).model)
    tok.pad_token = None
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.mark.parametrize("method", ["hlpt", "lora", "para", "h2lpt"])
def test_plan_of_a_saved_directory_equals_the_built_in_config(tiny_dir, method):
    extra = ["layer_ratio=[1,2,1]"] if method == "h2lpt" else []
    ours = plan_json("model=hf", f"model.name_or_path={tiny_dir}", f"method={method}", *extra)
    builtin = plan_json("model=tiny", f"method={method}", *extra)
    for key in ("trainable_params", "total_params", "layers", "layer_params"):
        assert ours[key] == builtin[key], key
    assert ours["model"] == tiny_dir.name  # named by its directory


def test_a_saved_directory_trains_and_its_pad_less_tokenizer_pads_with_eos(tiny_dir, tmp_path):
    model, tok = load_model(compose("train", ["model=hf", f"model.name_or_path={tiny_dir}"]).model)
    assert tok.pad_token_id == tok.eos_token_id
    run = tmp_path / "run"
    p = subprocess.run([EXE, "train", "model=hf", f"model.name_or_path={tiny_dir}", "method=lora",
                        "dataset=synthetic_math", "logger=none", "train.max_steps=1", "eval.limit=2",
                        "eval.max_new_tokens=4", f"hydra.run.dir={run}"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    prov = json.loads((run / "metrics.json").read_text())["provenance"]["base_weights"]
    assert prov["source"] == "hf" and prov["id"] == str(tiny_dir)


@pytest.mark.slow
def test_plan_of_a_saved_smollm2_equals_the_built_in_config():
    from layerpeft.models.loading import _gguf_checkpoint

    saved = _gguf_checkpoint(dict(compose("train", ["model=smollm2_135m"]).model))  # a save_pretrained directory
    ours = plan_json("model=hf", f"model.name_or_path={saved}", "method=hlpt")
    builtin = plan_json("model=smollm2_135m", "method=hlpt")
    assert (ours["trainable_params"], ours["total_params"]) == (builtin["trainable_params"], builtin["total_params"])


def test_an_architecture_without_the_roles_is_refused_by_name(tmp_path):
    # Phi-3 fuses q, k, v into one projection and gate, up into another
    AutoConfig.for_model("phi3", vocab_size=32064, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2).save_pretrained(tmp_path)
    p = subprocess.run([EXE, "plan", "model=hf", f"model.name_or_path={tmp_path}", "method=lora"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    assert "model_type 'phi3' is not supported: its layers lack the llama-family module roles q, k, v, up, gate" \
        in p.stderr


def test_a_missing_model_is_one_line(tmp_path):
    p = subprocess.run([EXE, "plan", "model=hf", f"model.name_or_path={tmp_path / 'nothing'}"],
                       capture_output=True, text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert p.returncode == 2 and "no model config found" in p.stderr and "Traceback" not in p.stderr


SMALL_GEMMA = ["model=gemma2b", "model.source=random", "model.arch.hidden_size=64", "model.arch.intermediate_size=128",
               "model.arch.num_hidden_layers=4", "model.arch.num_attention_heads=4", "model.arch.head_dim=16",
               "model.arch.vocab_size=300"]


def test_a_random_model_has_the_paper_architecture_without_a_download():
    """`model.source=random`: the configured architecture (here Gemma's multi-query attention and
    its own special-token numbering) with seeded random weights and the byte tokenizer."""
    from layerpeft.models.loading import meta_model

    cfg = compose("train", SMALL_GEMMA)
    model, tok = load_model(cfg.model)
    meta = meta_model(cfg.model)
    assert type(model) is type(meta)
    assert {n: p.shape for n, p in model.named_parameters()} == {n: p.shape for n, p in meta.named_parameters()}
    again, _ = load_model(cfg.model)
    other, _ = load_model(compose("train", SMALL_GEMMA + ["+model.seed=1"]).model)
    w = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(model.state_dict()[w], again.state_dict()[w])
    assert not torch.equal(model.state_dict()[w], other.state_dict()[w])
    assert model.generation_config.eos_token_id == model.config.eos_token_id == tok.eos_token_id


def test_a_random_paper_model_trains_and_records_its_source(tmp_path):
    run = tmp_path / "run"
    p = subprocess.run([EXE, "train", *SMALL_GEMMA, "method=hlpt", "dataset=synthetic_math", "logger=none",
                        "train.max_steps=1", "eval.limit=2", "eval.max_new_tokens=4", f"hydra.run.dir={run}"],
                       capture_output=True, text=True, timeout=600, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["provenance"]["base_weights"]["source"] == "random" and metrics["status"] == "ok"


@pytest.mark.parametrize("overrides, message", [
    (["model.source=somewhere"], "model.source='somewhere': must be one of random, gguf, hub, hf"),
    (["model=hf", "model.name_or_path=/nowhere", "model.source=random"],
     "model.source='random': model nowhere has no arch numbers"),
    (["model.arch.vocab_size=100"], "model.arch.vocab_size=100: a random model needs at least the byte tokenizer's 259"),
])
def test_a_random_model_that_cannot_be_built_is_one_line(tmp_path, overrides, message):
    p = subprocess.run([EXE, "train", "model=tiny", *overrides, "logger=none", f"hydra.run.dir={tmp_path / 'run'}"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, p.stderr[-1500:]
    assert not (tmp_path / "run").exists()
