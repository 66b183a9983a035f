"""Collecting run directories and rendering them as markdown and CSV tables."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from layerpeft.rundir import METRICS, read_metrics


@dataclass
class Run:
    path: Path
    label: str
    metrics: dict[str, Any]
    segments: str


def _label(run_dir: Path) -> str:
    """The job's Hydra overrides (what distinguishes it in a sweep), else the directory name."""
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        items = yaml.safe_load(overrides.read_text()) or []
        if items:
            return " ".join(items)
    return run_dir.name


def _segments(run_dir: Path) -> str:
    plan = run_dir / "plan.json"
    if not plan.is_file():
        return ""
    import json

    segs = json.loads(plan.read_text())["segments"]
    return ":".join(str(s["end"] - s["start"]) for s in segs)


def collect_runs(paths: list[str | Path]) -> list[Run]:
    """Every run directory (one with metrics.json) at or below ``paths``, in path order."""
    runs = []
    for root in map(Path, paths):
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such run or sweep directory")
        found = [root] if (root / METRICS).is_file() else sorted(p.parent for p in root.rglob(METRICS))
        for d in found:
            if "checkpoints" in d.parts:
                continue
            runs.append(Run(d, _label(d), read_metrics(d), _segments(d)))
    return runs


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.2f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def table_rows(runs: list[Run]) -> tuple[list[str], list[list[Any]]]:
    datasets: list[str] = []
    for r in runs:
        for name in (r.metrics.get("datasets") or {}):
            if name not in datasets:
                datasets.append(name)
    header = ["run", "method", "layers", *datasets, "Avg.", "trainable params", "status"]
    rows = []
    for r in runs:
        m = r.metrics
        accs = [((m.get("datasets") or {}).get(d) or {}).get("accuracy") for d in datasets]
        rows.append([r.label, m.get("method"), r.segments, *accs, m.get("average"),
                     m.get("trainable_params"), m.get("status", "ok") if m.get("status") != "failed" else f"failed: {m.get('error')}"])
    return header, rows


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
    runs = [Run(Path(label), label, m, "") for label, m in labelled]
    header, rows = table_rows(runs)
    keep = [i for i, h in enumerate(header) if h not in ("layers", "status")]
    return markdown([header[i] for i in keep], [[r[i] for i in keep] for r in rows])
