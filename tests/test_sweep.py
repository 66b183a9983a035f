"""Multirun sweeps: every job runs even if one fails; `layerpeft report` tabulates them."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

EXE = str(Path(sys.executable).with_name("layerpeft"))
RATIOS = "5:27,8:24,11:21,16:16,21:11,24:8,27:5"
COMMON = ["model=tiny", "method=hlpt", "dataset=synthetic_math", "logger=none", "train.max_steps=2",
          "eval.limit=4", "eval.max_new_tokens=4"]


def test_ratio_sweep_and_report(tmp_path):
    sweep = tmp_path / "sweep"
    # 3:4:1 does not fit HLPT's two slots: that job fails, the others still run, and the sweep
    # exits non-zero after its summary so that scripts see the failure.
    p = subprocess.run([EXE, "train", "-m", *COMMON, f"layer_ratio={RATIOS},3:4:1", f"hydra.sweep.dir={sweep}"],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 1, p.stderr[-3000:]
    assert "7 of 8 jobs succeeded" in p.stdout
    assert "FAILED layer_ratio=3:4:1: PlanError: layer_ratio '3:4:1' has 3 segments" in p.stdout
    metrics = [json.loads(m.read_text()) for m in sorted(sweep.glob("*/metrics.json"))]
    assert len(metrics) == 8

    out = tmp_path / "report"
    r = subprocess.run([EXE, "report", str(sweep), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(out / "report.csv")))
    by_label = {row["run"]: row for row in rows}
    # 4 tiny layers: 5:27, 8:24, 11:21 → 1:3; 16:16 → 2:2; 21:11, 24:8, 27:5 → 3:1
    expected = {"5:27": "1:3", "8:24": "1:3", "11:21": "1:3", "16:16": "2:2", "21:11": "3:1", "24:8": "3:1", "27:5": "3:1"}
    # tiny: d 64, FFN 128, 2 key-value heads of 16. A gated LoRA-FFN layer: 8·128 + 64·8 + (128 + 1);
    # a gated 20-token prefix layer: 2·20·32 + (64 + 1)
    lora_layer, prefix_layer = 8 * 128 + 64 * 8 + 129, 2 * 20 * 32 + 65
    for ratio, layers in expected.items():
        row = by_label[f"layer_ratio={ratio}"]
        bottom, top = map(int, layers.split(":"))
        assert row["layers"] == layers and row["status"] == "ok"
        assert int(row["trainable params"]) == bottom * lora_layer + top * prefix_layer
        # a job's directory names its overrides, sorted, unescaped (no backslash for the shell to eat)
        (run_dir,) = [d for d in sweep.iterdir() if f",layer_ratio={ratio}," in d.name]
        answers = [json.loads(line)["correct"] for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
        assert len(answers) == 4 and float(row["synthetic"]) == pytest.approx(100 * sum(answers) / 4)
    assert by_label["layer_ratio=3:4:1"]["status"].startswith("failed: PlanError")
    assert "| layer_ratio=16:16 | hlpt | 2:2 |" in (out / "report.md").read_text()
    assert (sweep / "report.md").is_file()  # the sweep's own summary table


def test_submitit_local_launcher_runs_the_same_sweep(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    p = subprocess.run([EXE, "train", "-m", *COMMON, "layer_ratio=5:27,27:5", "hydra/launcher=submitit_local",
                        "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}"],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    metrics = [json.loads(m.read_text()) for m in sorted(sweep.glob("*/metrics.json"))]
    assert [m["status"] for m in metrics] == ["ok", "ok"]
    # each job ran its own plan: 5:27 → 1 LoRA layer and 3 prefix layers on the tiny model, 27:5 → 3 and 1
    plans = [json.loads(p.read_text())["layers"] for p in sorted(sweep.glob("*/plan.json"))]
    assert plans == [[["lora_ffn"]] + [["prefix"]] * 3, [["lora_ffn"]] * 3 + [["prefix"]]]


def test_slurm_launcher_config_composes():
    from hydra import compose as hydra_compose, initialize_config_dir

    from layerpeft.config import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = hydra_compose("train", ["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.timeout_min) == (1, 1, 720)


@pytest.mark.parametrize(
    "experiment,method,params",
    [
        ("tied_lora_sweep", "tied_lora", {"method.preset": 8, "method.r": 4}),
        ("hlpt_ratio_sweep", "hlpt", {"layer_ratio": 7}),
    ],
)
def test_experiment_sweeps_compose(experiment, method, params):
    from hydra import compose as hydra_compose, initialize_config_dir

    from layerpeft.config import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = hydra_compose("train", [f"+experiment={experiment}"], return_hydra_config=True)
    assert cfg.method.name == method
    grid = cfg.hydra.sweeper.params
    assert {k: len(str(v).split(",")) for k, v in grid.items()} == params


@pytest.mark.parametrize("experiment", ["hlpt_ratio_sweep", "hlpt_layouts"])
def test_ratio_and_layout_experiments_run_without_gates_as_the_paper(experiment):
    """Table 8's 24:8 row is Table 3's "w/o gate": the sweep and the Table 9 layouts are ungated."""
    from layerpeft.commands.plan import plan_for
    from layerpeft.config import compose

    cfg = compose("train", [f"+experiment={experiment}", "model=llama7b", "layer_ratio=layers25pct"])
    assert cfg.method.gate is False
    assert all(opts["gate"] is False for opts in plan_for(cfg).options.values())


def test_reduced_commonsense_experiment_keeps_the_suite_and_shrinks_it():
    """Table 7's reduced protocol: the commonsense suite, 1,000 training examples, 200 questions
    per test set, the paper's four methods."""
    from hydra import compose as hydra_compose, initialize_config_dir

    from layerpeft.config import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = hydra_compose("train", ["+experiment=hlpt_table7_reduced"], return_hydra_config=True)
    assert cfg.dataset.name == "commonsense" and cfg.dataset.train_sample == 15000
    assert cfg.data.train_size == 1000 and cfg.eval.limit == 200 and cfg.eval.max_new_tokens == 32
    assert cfg.hydra.sweeper.params.method.split(",") == ["prefix", "lora", "hlpt", "h2lpt"]


def test_headline_script_runs_its_cells_with_seeds_resumes_and_reports_against_lora(tmp_path):
    out = tmp_path / "headline"
    cmd = [sys.executable, str(Path(__file__).parents[1] / "scripts" / "headline.py"), str(out), "--seeds", "1,2",
           "--cells", "lora,lora_lr3e-3", "--threads", "1",
           # the protocol's model, data and size replaced by key; the rest (resume, checkpoints) kept
           "model=tiny", "dataset=synthetic_math", "data.train_size=null", "train.max_steps=2", "eval.limit=8",
           "eval.max_new_tokens=4"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    configs = {d.parent.name: yaml.safe_load(d.read_text()) for d in sorted(out.glob("*/*/config.yaml"))}
    assert len(configs) == 4
    cells = {(c["method"]["name"], c["train"]["lr"], c["seed"]) for c in configs.values()}
    # LoRA at its own learning rate (null: the method's 3e-4) and at HLPT's, each with seeds 1 and 2
    assert cells == {("lora", None, 1), ("lora", None, 2), ("lora", 3e-3, 1), ("lora", 3e-3, 2)}
    assert all(c["train"]["resume"] is True and c["model"]["name"] == "tiny" for c in configs.values())
    rows = list(csv.DictReader(open(out / "report" / "comparison.csv")))
    assert [(row["label"], row["seeds"]) for row in rows] == [("lora", "2"), ("train.lr=0.003", "2")]  # as Hydra writes it
    assert float(rows[0]["delta"]) == 0 and math.isfinite(float(rows[1]["p_value"]))
    # the same command again resumes: every run has finished, nothing is trained twice
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-2000:]
    logs = "".join((out / f"{c}.log").read_text() for c in ("lora", "lora_lr3e-3"))
    assert logs.count("has finished (status ok): nothing to resume") == 4
    # a cell the script does not know, or a run that would not start, is refused before anything runs
    bad = subprocess.run([*cmd[:3], "--cells", "lora,qlora"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown cell(s) qlora" in bad.stderr
    fresh = tmp_path / "fresh"
    bad = subprocess.run([*cmd[:2], str(fresh), *cmd[3:], "train.lrr=3"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip() == "headline: error: cell lora, seed=1: Could not override 'train.lrr'."
    assert not fresh.exists()
