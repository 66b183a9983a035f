"""Collecting run directories and rendering them as markdown and CSV tables."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from layerpeft.rundir import METRICS, PLAN, PREDICTIONS, read_metrics


@dataclass
class Run:
    path: Path
    label: str
    metrics: dict[str, Any]
    segments: str
    overrides: list[str]


#: Overrides that change where or how fast a run goes, not what it computes: left out of labels.
COSMETIC = ("hydra.", "data.dir=", "logger=", "train.save_steps=", "train.resume=", "train.device=",
            "train.log_every=", "eval.batch_size=")


def _overrides(run_dir: Path) -> list[str]:
    """The job's Hydra command-line overrides, unescaped (``layer_ratio=5:27``)."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    return [item.replace("\\:", ":") for item in (yaml.safe_load(path.read_text()) or [])]


def _segments(run_dir: Path) -> str:
    plan = run_dir / PLAN
    if not plan.is_file():
        return ""
    ranges = dict.fromkeys((s["start"], s["end"]) for s in json.loads(plan.read_text())["segments"])
    return ":".join(str(end - start) for start, end in ranges)  # a multi-kind slot counts once


def collect_runs(paths: list[str | Path]) -> list[Run]:
    """Every run directory (one with metrics.json) at or below ``paths``, in path order.

    A run's label is what distinguishes it: the overrides it does not share with all the
    other runs collected (in a ratio sweep, ``layer_ratio=…``; ``COSMETIC`` ones aside),
    else its directory name.
    """
    dirs = []
    for root in map(Path, paths):
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such run or sweep directory")
        found = [root] if (root / METRICS).is_file() else sorted(p.parent for p in root.rglob(METRICS))
        dirs += [d for d in found if "checkpoints" not in d.parts]
    overrides = {d: _overrides(d) for d in dirs}
    common = set.intersection(*(set(o) for o in overrides.values())) if len(dirs) > 1 else set()
    runs = []
    for d in dirs:
        distinct = [o for o in overrides[d] if o not in common and not o.startswith(COSMETIC)]
        runs.append(Run(d, " ".join(distinct) or d.name, read_metrics(d), _segments(d), overrides[d]))
    return runs


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.2f}" if abs(x) >= 0.01 or x == 0 else f"{x:.2g}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def _datasets(runs: list[Run]) -> list[str]:
    datasets: list[str] = []
    for r in runs:
        for name in (r.metrics.get("datasets") or {}):
            if name not in datasets:
                datasets.append(name)
    return datasets


def table_rows(runs: list[Run]) -> tuple[list[str], list[list[Any]]]:
    """One row per run; when some configuration ran with several seeds, one row per cell
    (``cell_rows``)."""
    from layerpeft.report.stats import group_cells

    if any(c.seeds > 1 for c in group_cells(runs)):
        return cell_rows(runs)
    datasets = _datasets(runs)
    header = ["run", "method", "layers", *datasets, "Avg.", "trainable params", "status"]
    rows = []
    for r in runs:
        m = r.metrics
        accs = [((m.get("datasets") or {}).get(d) or {}).get("accuracy") for d in datasets]
        rows.append([r.label, m.get("method"), r.segments, *accs, m.get("average"), m.get("trainable_params"), _status(m)])
    return header, rows


def _mean_sd(mean: float | None, sd: float, seeds: int) -> str | None:
    if mean is None:
        return None
    return f"{mean:.2f}" if seeds == 1 else f"{mean:.2f} ± {sd:.2f}"


def cell_rows(runs: list[Run]) -> tuple[list[str], list[list[Any]]]:
    """One row per cell (runs that differ only in ``seed``): each set's and the average's mean
    ± standard deviation over the seeds, and the number of seeds."""
    from layerpeft.report.stats import describe, group_cells

    datasets = _datasets(runs)
    header = ["run", "method", "layers", "seeds", *datasets, "Avg.", "trainable params", "status"]
    rows = []
    for cell in group_cells(runs):
        d = describe(cell)
        statuses = sorted({_status(r.metrics) for r in cell.runs})
        rows.append([cell.label, cell.method, cell.runs[0].segments, cell.seeds,
                     *[_mean_sd(*d["sets"][k], cell.seeds) if k in d["sets"] else None for k in datasets],
                     _mean_sd(d["average_mean"], d["average_sd"], cell.seeds),
                     cell.runs[0].metrics.get("trainable_params"), ", ".join(statuses)])
    return header, rows


COMPARISON_COLUMNS = ["label", "method", "seeds", "average_mean", "average_sd", "delta", "ci_low", "ci_high", "p_value"]


def comparison_rows(runs: list[Run], baseline: str) -> tuple[list[str], list[list[Any]], list[list[Any]]]:
    """Every cell against the ``baseline`` cell: Δ of the average, its paired 95 % bootstrap
    interval and p-value (``report/stats.py``); ``*`` marks intervals that exclude 0. Returns
    the markdown header and rows and the rows of comparison.csv (``COMPARISON_COLUMNS``)."""
    from layerpeft.report.stats import compare, describe, group_cells, load_predictions

    cells = group_cells(runs)
    base = find_baseline_cell(cells, baseline)
    for cell in cells:
        load_predictions(cell)
    header = ["run", "method", "seeds", "Avg.", f"Δ vs {base.label}", "95 % CI", "p", "test"]
    rows, table = [], []
    for cell in cells:
        d = describe(cell)
        avg = _mean_sd(d["average_mean"], d["average_sd"], cell.seeds)
        if cell is base:  # against itself: no difference, a zero-width interval
            rows.append([cell.label, cell.method, cell.seeds, avg, "(baseline)", None, None, None])
            table.append([cell.label, cell.method, cell.seeds, d["average_mean"], d["average_sd"], 0.0, 0.0, 0.0, 1.0])
            continue
        c = compare(cell, base)
        mark = " *" if c.significant else ""
        rows.append([cell.label, cell.method, cell.seeds, avg, f"{c.delta:+.2f}{mark}",
                     f"[{c.ci_low:+.2f}, {c.ci_high:+.2f}]", f"{c.p_value:.3g}", c.test])
        table.append([cell.label, cell.method, cell.seeds, d["average_mean"], d["average_sd"], c.delta, c.ci_low,
                      c.ci_high, c.p_value])
    return header, rows, table


def find_baseline_cell(cells: list, baseline: str):
    """The cell whose label is ``baseline``, else the one holding a run directory of that name,
    else the one cell of that method; an ambiguous or unknown name is an error listing the cells."""
    for match in (lambda c: c.label == baseline, lambda c: any(r.path.name == baseline for r in c.runs)):
        found = [c for c in cells if match(c)]
        if found:
            return found[0]
    by_method = [c for c in cells if c.method == baseline]
    if len(by_method) == 1:
        return by_method[0]
    labels = ", ".join(c.label for c in (by_method or cells))
    what = "several cells have method" if by_method else "no cell is labelled or has method"
    raise ValueError(f"--baseline {baseline}: {what} {baseline!r}; pass one of: {labels}")


def _status(metrics: dict[str, Any]) -> str:
    return f"failed: {metrics.get('error')}" if metrics.get("status") == "failed" else metrics.get("status", "ok")


def markdown(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def csv_text(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def accuracy_table(labelled: list[tuple[str, dict[str, Any]]]) -> str:
    """Markdown accuracy table for (label, metrics) pairs — the end-of-run summary."""
    runs = [Run(Path(label), label, m, "", []) for label, m in labelled]
    header, rows = table_rows(runs)
    keep = [i for i, h in enumerate(header) if h not in ("layers", "status")]
    return markdown([header[i] for i in keep], [[r[i] for i in keep] for r in rows])


def chance_accuracy(answers: list[tuple[Any, Any]]) -> float:
    """Accuracy (%) expected of (prediction, gold) pairs if the predictions were shuffled across
    the questions: sum over answers a of p(pred = a) * p(gold = a). A small model that learns a
    task's answer format but not the task scores about this (e.g. always "true" on BoolQ), so a
    score only means something by how far it rises above it."""
    preds, golds = Counter(str(p) for p, _ in answers), Counter(str(g) for _, g in answers)
    return 100.0 * sum(preds[a] * golds[a] for a in golds) / len(answers) ** 2


def chance_rows(runs: list[Run]) -> tuple[list[str], list[list[Any]]]:
    """Per run and test set, the accuracy above ``chance_accuracy`` of the run's own answers
    (read from predictions.jsonl); "Avg." is the mean over the sets."""
    header, rows = table_rows(runs)
    datasets = header[3:header.index("Avg.")]
    out = []
    for r, row in zip(runs, rows):
        answers: dict[str, list[tuple[Any, Any]]] = defaultdict(list)
        path = r.path / PREDICTIONS
        if path.is_file():
            for i, line in enumerate(path.read_text().splitlines(), 1):
                try:
                    x = json.loads(line)
                    answers[x["dataset"]].append((x["pred"], x["gold"]))
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ValueError(f"{path}:{i}: not a prediction record ({e!r})") from e
        margins = [acc - chance_accuracy(answers[d]) if acc is not None and answers[d] else None
                   for d, acc in zip(datasets, row[3:3 + len(datasets)])]
        known = [m for m in margins if m is not None]
        out.append([r.label, r.metrics.get("method"), *margins, sum(known) / len(known) if known else None, row[-1]])
    return ["run", "method", *datasets, "Avg.", "status"], out


def find_baseline(runs: list[Run], baseline: str) -> Run:
    """The run whose label, directory name or method is ``baseline``."""
    for r in runs:
        if baseline in (r.label, r.path.name, r.metrics.get("method")):
            return r
    raise ValueError(f"no run is labelled {baseline!r} or has that method; runs: {', '.join(r.label for r in runs)}")


def relative_rows(runs: list[Run], baseline: str) -> tuple[list[str], list[list[Any]]]:
    """HLPT Table 5's layout: parameters, training time and accuracy beside a baseline run's."""
    ref = find_baseline(runs, baseline).metrics
    ref_params, ref_time = ref.get("trainable_params"), (ref.get("train") or {}).get("wall_s")
    header = ["run", "method", "trainable params", "params (×ref)", "train time s", "time (×ref)", "Avg.", "Δ Avg."]
    rows = []
    for r in runs:
        m = r.metrics
        params, time_s, avg = m.get("trainable_params"), (m.get("train") or {}).get("wall_s"), m.get("average")
        rows.append([r.label, m.get("method"), params, params / ref_params if params and ref_params else None,
                     time_s, time_s / ref_time if time_s and ref_time else None, avg,
                     avg - ref["average"] if avg is not None and ref.get("average") is not None else None])
    return header, rows


EFFICIENCY_COLUMNS = [
    ("trainable_params", "trainable params"), ("trainable_pct", "trainable %"), ("changed_pct", "changed %"),
    ("peak_memory_mb", "peak MB"), ("train_tokens_per_s", "train tok/s"),
    ("inference_tokens_per_s", "infer tok/s"), ("adapter_bytes", "adapter bytes"),
]
RELATIVE = ("peak_memory_mb", "train_tokens_per_s", "inference_tokens_per_s")


def efficiency_rows(runs: list[Run], baseline: str | None = None) -> tuple[list[str], list[list[Any]]]:
    """The survey's Table 5 layout: score, parameters, memory and throughput per run; with
    ``baseline`` (a run label or method name; default: a ``full`` fine-tuning run if present),
    memory and throughput also relative to that run."""
    ref = None
    if baseline is not None:
        ref = find_baseline(runs, baseline).metrics.get("efficiency")
    else:
        ref = next((r.metrics.get("efficiency") for r in runs if r.metrics.get("method") == "full"), None)
    header = ["run", "method", "score (Avg.)"] + [h for _, h in EFFICIENCY_COLUMNS]
    if ref:
        header += [f"{k.replace('_', ' ')} (×ref)" for k in RELATIVE]
    header.append("status")
    rows = []
    for r in runs:
        e = r.metrics.get("efficiency") or {}
        row = [r.label, r.metrics.get("method"), r.metrics.get("average")] + [e.get(k) for k, _ in EFFICIENCY_COLUMNS]
        if ref:
            row += [e[k] / ref[k] if e.get(k) and ref.get(k) else None for k in RELATIVE]
        rows.append(row + [_status(r.metrics)])
    return header, rows
