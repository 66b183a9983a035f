"""Which differences between methods are real: seeds as cells, paired bootstrap intervals and
exact McNemar tests over the evaluation questions.

A *cell* is the runs that differ only in ``seed``. Its score is the papers' average: the mean
over evaluation sets of each set's accuracy, averaged over the cell's seeds. Comparisons are
paired: both cells answered the same questions (checked), so a question that both get right or
both get wrong says nothing about the difference, and the interval is much narrower than two
separate intervals would suggest.

- Interval: a paired bootstrap over questions, stratified by evaluation set (each resample
  draws every set's questions with replacement, the same draw for both cells); with several
  seeds, each cell's seeds are resampled too. 95 % = the 2.5th and 97.5th percentiles.
- p-value: the exact McNemar test on the pooled questions when both cells have one run (the
  discordant questions split as a fair coin would, under no difference); otherwise the
  bootstrap's: how often the resampled difference, centred on the observed one, lies as far
  from it as the observed one lies from zero.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from layerpeft.rundir import PREDICTIONS

SEED_PREFIXES = ("seed=",)
BOOTSTRAP_SAMPLES = 10_000
BOOTSTRAP_SEED = 0


@dataclass
class Cell:
    """Runs of one configuration, one per seed."""

    label: str
    runs: list  # report.tables.Run
    # per set, a (seeds × questions) 0/1 matrix, and the questions' instructions (for pairing)
    correct: dict[str, np.ndarray] = field(default_factory=dict)
    questions: dict[str, list[str]] = field(default_factory=dict)

    @property
    def method(self) -> str | None:
        return self.runs[0].metrics.get("method")

    @property
    def seeds(self) -> int:
        return len(self.runs)

    def set_accuracies(self) -> dict[str, np.ndarray]:
        """Per set, each seed's accuracy (%), from metrics.json."""
        out: dict[str, list[float]] = {}
        for r in self.runs:
            for name, m in (r.metrics.get("datasets") or {}).items():
                out.setdefault(name, []).append(m["accuracy"])
        return {k: np.array(v) for k, v in out.items() if len(v) == self.seeds}

    def averages(self) -> np.ndarray:
        """Each seed's average over the sets (the papers' "Avg.")."""
        return np.array([r.metrics["average"] for r in self.runs if r.metrics.get("average") is not None])


def group_cells(runs: list) -> list[Cell]:
    """Runs whose labels differ only in ``seed=…`` form one cell (in first-seen order). A run whose
    label is only its seed (a plain seed sweep, or a cell whose other overrides all runs share)
    belongs to the cell named by its method."""
    cells: dict[str, Cell] = {}
    for r in runs:
        key = (" ".join(part for part in r.label.split(" ") if not part.startswith(SEED_PREFIXES))
               or r.metrics.get("method") or r.label)
        cells.setdefault(key, Cell(key, [])).runs.append(r)
    return list(cells.values())


def load_predictions(cell: Cell) -> None:
    """Fill ``cell.correct``/``questions`` from its runs' predictions.jsonl; ``ValueError``
    naming the file when a run lacks them or its seeds did not answer the same questions."""
    per_run = []
    for r in cell.runs:
        path = Path(r.path) / PREDICTIONS
        if not path.is_file():
            raise ValueError(f"{path}: missing (a comparison needs each run's answers)")
        sets: dict[str, dict[int, tuple[str, bool]]] = {}
        for i, line in enumerate(path.read_text().splitlines(), 1):
            try:
                x = json.loads(line)
                sets.setdefault(x["dataset"], {})[int(x["index"])] = (x["instruction"], bool(x["correct"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{path}:{i}: not a prediction record ({e!r})") from e
        per_run.append((path, {k: [v[i] for i in sorted(v)] for k, v in sets.items()}))
    first_path, first = per_run[0]
    for path, sets in per_run[1:]:
        check_same_questions(first_path, first, path, sets)
    cell.questions = {k: [q for q, _ in v] for k, v in first.items()}
    cell.correct = {k: np.array([[ok for _, ok in sets[k]] for _, sets in per_run], dtype=float) for k in first}


def check_same_questions(path_a, a: dict, path_b, b: dict) -> None:
    if set(a) != set(b):
        raise ValueError(f"{path_a} and {path_b} were scored on different sets ({sorted(a)} / {sorted(b)})")
    for name in a:
        if [q for q, _ in a[name]] != [q for q, _ in b[name]]:
            raise ValueError(f"{path_a} and {path_b} answered different {name} questions; they cannot be paired")


def macro_average(correct: dict[str, np.ndarray], sets: list[str]) -> np.ndarray:
    """Mean over ``sets`` of each set's accuracy (%), per row (seed or resample)."""
    return np.mean([100.0 * correct[s].mean(axis=-1) for s in sets], axis=0)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant questions (baseline right
    and other wrong, and the reverse): 2 · P(X ≤ min(b, c)), X ~ Binomial(b + c, 1/2), at most 1."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2.0 * tail)


@dataclass
class Comparison:
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    test: str  # "mcnemar" or "bootstrap"

    @property
    def significant(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0


def compare(other: Cell, baseline: Cell, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> Comparison:
    """``other`` minus ``baseline`` on the average, with its paired bootstrap interval and p-value."""
    for name in baseline.questions:
        if other.questions.get(name) != baseline.questions[name]:
            raise ValueError(f"{other.label} and {baseline.label} answered different {name} questions; "
                             "they cannot be paired")
    sets = sorted(baseline.questions)
    if set(other.questions) != set(sets):
        raise ValueError(f"{other.label} and {baseline.label} were scored on different sets")
    delta = float(macro_average(other.correct, sets).mean() - macro_average(baseline.correct, sets).mean())
    rng = np.random.default_rng(seed)
    draws = []
    seeds_o = rng.integers(0, other.seeds, size=(samples, other.seeds))
    seeds_b = rng.integers(0, baseline.seeds, size=(samples, baseline.seeds))
    for name in sets:
        n = len(baseline.questions[name])
        idx = rng.integers(0, n, size=(samples, n))  # the same questions for both cells
        per_seed_o = other.correct[name][:, idx].mean(axis=-1)  # (seeds, samples)
        per_seed_b = baseline.correct[name][:, idx].mean(axis=-1)
        acc_o = np.take_along_axis(per_seed_o.T, seeds_o, axis=1).mean(axis=1)
        acc_b = np.take_along_axis(per_seed_b.T, seeds_b, axis=1).mean(axis=1)
        draws.append(100.0 * (acc_o - acc_b))
    boot = np.mean(draws, axis=0)
    low, high = np.percentile(boot, [2.5, 97.5])
    if other.seeds == 1 and baseline.seeds == 1:
        o = np.concatenate([other.correct[s][0] for s in sets])
        b = np.concatenate([baseline.correct[s][0] for s in sets])
        p, test = mcnemar_exact(int(((b == 1) & (o == 0)).sum()), int(((b == 0) & (o == 1)).sum())), "mcnemar"
    else:
        p = float((np.sum(np.abs(boot - delta) >= abs(delta)) + 1) / (samples + 1))
        test = "bootstrap"
    return Comparison(delta, float(low), float(high), p, test)


def interval(cell: Cell, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """A cell's own 95 % bootstrap interval for its average (questions and seeds resampled)."""
    rng = np.random.default_rng(seed)
    sets = sorted(cell.questions)
    seeds = rng.integers(0, cell.seeds, size=(samples, cell.seeds))
    accs = []
    for name in sets:
        n = len(cell.questions[name])
        per_seed = cell.correct[name][:, rng.integers(0, n, size=(samples, n))].mean(axis=-1)
        accs.append(100.0 * np.take_along_axis(per_seed.T, seeds, axis=1).mean(axis=1))
    low, high = np.percentile(np.mean(accs, axis=0), [2.5, 97.5])
    return float(low), float(high)


def describe(cell: Cell) -> dict[str, Any]:
    """Mean and standard deviation (over seeds; 0 for one) of the average and of each set."""
    avgs = cell.averages()
    return {"average_mean": float(avgs.mean()) if len(avgs) else None,
            "average_sd": float(avgs.std(ddof=1)) if len(avgs) > 1 else 0.0,
            "sets": {k: (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0)
                     for k, v in cell.set_accuracies().items()}}
