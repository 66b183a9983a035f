"""The first hour of a user: the headline command, any ratio, an informative console and log,
help and shell completion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import SHARED_DATA

EXE = str(Path(sys.executable).with_name("layerpeft"))


def test_the_headline_command_says_what_is_missing_before_creating_anything(tmp_path):
    """Offline, no GPU, nothing cached: exit 2, a line per missing thing, no run directory, no W&B run."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HF_"))},
           "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    p = subprocess.run([EXE, "train", "method=hlpt", "model=llama7b", f"data.dir={SHARED_DATA}"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 2
    errors = [line for line in p.stderr.splitlines() if line.startswith("layerpeft train: error:")]
    assert any("huggyllama/llama-7b are not in the Hugging Face cache and the hub cannot be reached" in e
               for e in errors)
    assert any("would train on the CPU (no GPU here)" in e and "train.allow_cpu=true" in e for e in errors)
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "outputs").exists() and not list(tmp_path.rglob("wandb"))


def test_real_models_default_to_the_math_protocol_and_the_embedded_one_to_synthetic():
    from layerpeft.config import compose

    assert compose("train", ["model=llama7b"]).dataset.name == "math"
    assert compose("train", ["model=llama7b", "dataset=synthetic_math"]).dataset.name == "synthetic_math"
    assert compose("train", []).dataset.name == "synthetic_math"  # `make run` and a first try need no data


def test_any_ratio_sweeps_without_a_file_per_ratio(tmp_path):
    sweep = tmp_path / "sweep"
    p = subprocess.run([EXE, "train", "-m", "model=tiny", "method=hlpt", "layer_ratio=1:3,3:1", "dataset=synthetic_math",
                        "train.max_steps=2", "eval.limit=4", "logger=none", f"hydra.sweep.dir={sweep}"],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    plans = {json.loads((d / "plan.json").read_text())["segments"][0]["end"]: d.name for d in sweep.iterdir()
             if (d / "plan.json").is_file()}
    assert set(plans) == {1, 3}  # 1:3 and 3:1 on the 4-layer model
    assert all(json.loads((sweep / d / "metrics.json").read_text())["status"] == "ok" for d in plans.values())


def test_console_and_train_log_say_what_runs_and_how_it_went(tmp_path):
    run = tmp_path / "run"
    p = subprocess.run([EXE, "train", "model=tiny", "method=hlpt", "dataset=synthetic_math", "logger=none",
                        "train.max_steps=2", "eval.limit=4", "eval.max_new_tokens=4", f"hydra.run.dir={run}"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    log = (run / "train.log").read_text()
    for text in ("model tiny: ", "plan hlpt: lora_ffn 0-2, prefix 3-3 of 4 layers; 6,340 trainable",
                 "precision ", "data synthetic_math: 600 training and 120 validation examples; 2 optimizer steps",
                 "validation loss", "synthetic: ", "| run | method | synthetic | Avg. |"):
        assert text in log and text in p.stdout, text


def test_help_lists_the_config_groups_and_completion_works():
    h = subprocess.run([EXE, "train", "--help"], capture_output=True, text=True, timeout=120)
    assert h.returncode == 0 and "method: bitfit, dora" in h.stdout and "layerpeft train method=hlpt" in h.stdout
    install = subprocess.run([EXE, "train", "-sc", "install=bash"], capture_output=True, text=True, timeout=120)
    assert install.stdout.rstrip().endswith("-F hydra_bash_completion layerpeft")
    query = lambda line: subprocess.run([EXE, "-sc", "query=bash"], capture_output=True, text=True, timeout=120,
                                        env={**os.environ, "COMP_LINE": line}).stdout.split()
    assert "train" in query("layerpeft tr") and "prepare-data" in query("layerpeft ")
    assert "method=hlpt" in query("layerpeft train method=hl")
