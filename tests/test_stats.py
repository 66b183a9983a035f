"""Seeds, paired intervals and p-values, against hand-computed cases."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from layerpeft.report.stats import Cell, compare, describe, group_cells, interval, mcnemar_exact
from layerpeft.report.tables import Run

EXE = str(Path(sys.executable).with_name("layerpeft"))


def test_exact_mcnemar_against_the_binomial_by_hand():
    # 1 question only the baseline gets right, 9 only the other: 2 · (C(10,0) + C(10,1)) / 2^10
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024)
    assert mcnemar_exact(9, 1) == pytest.approx(22 / 1024)
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0


def cell(label: str, per_seed: list[dict[str, list[int]]]) -> Cell:
    """A cell from constructed answers: per seed, per set, 1 = right."""
    runs = []
    for answers in per_seed:
        accs = {k: 100.0 * sum(v) / len(v) for k, v in answers.items()}
        metrics = {"method": label, "average": sum(accs.values()) / len(accs),
                   "datasets": {k: {"accuracy": a} for k, a in accs.items()}}
        runs.append(Run(Path(label), label, metrics, "", []))
    c = Cell(label, runs)
    sets = per_seed[0]
    c.questions = {k: [f"{k}{i}" for i in range(len(v))] for k, v in sets.items()}
    c.correct = {k: np.array([s[k] for s in per_seed], dtype=float) for k in sets}
    return c


def test_a_difference_on_every_question_has_a_zero_width_interval():
    base = cell("base", [{"A": [0] * 20, "B": [0] * 10}])
    other = cell("other", [{"A": [1] * 20, "B": [1] * 10}])
    c = compare(other, base, samples=500)
    assert (c.delta, c.ci_low, c.ci_high) == (100.0, 100.0, 100.0)
    assert c.test == "mcnemar" and c.p_value == pytest.approx(2 / 2**30) and c.significant


def test_identical_answers_differ_by_nothing():
    answers = {"A": [1, 0, 1, 1, 0, 0, 1, 0], "B": [0, 1, 1]}
    c = compare(cell("x", [answers]), cell("y", [answers]), samples=500)
    assert (c.delta, c.ci_low, c.ci_high, c.p_value) == (0.0, 0.0, 0.0, 1.0) and not c.significant


def test_paired_bootstrap_on_constructed_predictions():
    """40 questions in one set: the other cell fixes 6 of the baseline's 20 wrong answers and
    breaks 2 of its right ones: Δ = (26 - 20) / 40 = 10 points, McNemar on 2 against 6."""
    base = [1] * 20 + [0] * 20
    other = [1] * 18 + [0] * 2 + [1] * 6 + [0] * 14
    c = compare(cell("o", [{"S": other}]), cell("b", [{"S": base}]), samples=4000)
    assert c.delta == pytest.approx(10.0)
    assert c.p_value == pytest.approx(mcnemar_exact(2, 6))
    # per question the paired difference is +1 (6), -1 (2) or 0 (32): sd of its mean
    # sqrt((8/40 - 0.1²) / 40) = 6.89 points, so the 95 % interval spans about 2 · 1.96 · 6.89 = 27
    assert c.ci_low < 10.0 < c.ci_high and abs((c.ci_high - c.ci_low) - 27.0) < 4.0
    assert all(abs(x / 2.5 - round(x / 2.5)) < 1e-9 for x in (c.ci_low, c.ci_high))  # multiples of 1/40
    assert not c.significant and c.p_value > 0.05  # 6 against 2 is no evidence either way


def test_seeds_make_a_cell_with_mean_sd_and_resampled_seeds():
    two = cell("two", [{"S": [1, 1, 0, 0, 0]}, {"S": [1, 1, 1, 0, 0]}])  # 40 % and 60 %
    d = describe(two)
    assert d["average_mean"] == pytest.approx(50.0) and d["average_sd"] == pytest.approx(math.sqrt(200))
    base = cell("base", [{"S": [0, 0, 0, 0, 0]}])
    c = compare(two, base, samples=2000)
    assert c.delta == pytest.approx(50.0) and c.test == "bootstrap" and c.significant
    low, high = interval(two, samples=2000)
    assert low < 50.0 < high


def test_runs_that_differ_only_in_seed_form_one_cell():
    runs = [Run(Path(f"r{i}"), label, {"method": m}, "", [])
            for i, (label, m) in enumerate([("method=lora seed=1", "lora"), ("method=hlpt seed=1", "hlpt"),
                                            ("method=lora seed=2", "lora"), ("method=hlpt seed=2", "hlpt")])]
    cells = group_cells(runs)
    assert [(c.label, c.seeds) for c in cells] == [("method=lora", 2), ("method=hlpt", 2)]
    # a plain seed sweep (the seed is all that differs) is one cell, named by its method; beside it a
    # cell whose only other override is its learning rate
    runs = [Run(Path(f"s{i}"), label, {"method": "lora"}, "", [])
            for i, label in enumerate(["seed=1", "seed=2", "train.lr=3e-3 seed=1", "train.lr=3e-3 seed=2"])]
    assert [(c.label, c.seeds) for c in group_cells(runs)] == [("lora", 2), ("train.lr=3e-3", 2)]


def test_seed_sweep_report_writes_the_comparison(tmp_path):
    sweep = tmp_path / "sweep"
    p = subprocess.run([EXE, "train", "-m", "model=tiny", "method=lora,hlpt", "seed=1,2", "dataset=synthetic_math",
                        "train.max_steps=2", "eval.limit=8", "logger=none", f"hydra.sweep.dir={sweep}"],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    out = tmp_path / "report"
    r = subprocess.run([EXE, "report", str(sweep), "--baseline", "lora", "--out", str(out)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = list(csv.DictReader(open(out / "comparison.csv")))
    assert [row["label"] for row in rows] == ["method=lora", "method=hlpt"]
    assert all(row["seeds"] == "2" for row in rows)
    assert all(math.isfinite(float(row[k])) for row in rows for k in ("ci_low", "ci_high", "p_value", "delta"))
    assert "| method=hlpt | hlpt | 2 |" in (out / "report.md").read_text()
    assert "± " in (out / "report.md").read_text()  # mean ± sd over the two seeds
