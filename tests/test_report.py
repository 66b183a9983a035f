"""`layerpeft report` regenerates the committed results table from the committed run files."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO
from layerpeft.report.figures import convergence, epoch_losses, ist_heatmaps, ratio_sweep, sweep_series
from layerpeft.report.tables import chance_accuracy, chance_rows, collect_runs, relative_rows

EXE = str(Path(sys.executable).with_name("layerpeft"))


def _committed_runs() -> dict[str, list[Path]]:
    """The committed run directories under results/, grouped by the dataset they were scored on."""
    groups: dict[str, list[Path]] = {}
    for d in sorted(d for d in (REPO / "results").iterdir() if (d / "metrics.json").is_file()):
        groups.setdefault(json.loads((d / "metrics.json").read_text())["dataset"], []).append(d)
    return groups


def test_report_reproduces_the_committed_results(tmp_path):
    groups = _committed_runs()
    assert {"math", "commonsense"} <= set(groups)
    results = (REPO / "results" / "README.md").read_text()
    for dataset, runs in groups.items():
        out = tmp_path / dataset
        p = subprocess.run([EXE, "report", *map(str, runs), "--out", str(out)], capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr
        table = list(csv.DictReader(open(out / "report.csv")))
        assert len(table) == len(runs)
        columns = [*json.loads((runs[0] / "metrics.json").read_text())["datasets"], "Avg."]
        for r in table:  # every committed run's figures in results/README.md are the ones the report computes
            cells = " | ".join(f"{float(r[k]):.2f}" for k in columns)
            assert cells in results, (dataset, r["method"], cells)
        if dataset == "math":
            rows = {(r["method"], f"{float(r['Avg.']):.2f}", r["layers"]) for r in table}  # a method may have several runs
            assert ("hlpt", "19.22", "23:7") in rows and ("none", "1.81", "") in rows


def _documented_report_commands() -> dict[str, str]:
    """`layerpeft report … --out results/NAME` as results/README.md prints them, by NAME."""
    text = re.sub(r"\\\n\s*", " ", (REPO / "results" / "README.md").read_text())  # join continued lines
    return {m[2]: m[1] for m in re.finditer(r"layerpeft report ([^`\n]*?) --out results/([\w.-]+)", text)}


def test_documented_report_commands_regenerate_the_committed_reports(tmp_path):
    """Each committed report directory is what its command in results/README.md writes today."""
    commands = _documented_report_commands()
    committed = {d.name for d in (REPO / "results").iterdir() if (d / "report.md").is_file()}
    assert committed == set(commands), "a committed report without its command in results/README.md, or the reverse"
    for name, args in commands.items():
        out = tmp_path / name
        p = subprocess.run(f"{EXE} report {args} --out {out}", shell=True, executable="/bin/bash", cwd=REPO,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr
        for table in ("report.md", "report.csv"):
            assert (out / table).read_text() == (REPO / "results" / name / table).read_text(), (name, table)
        figures = sorted(f.name for f in (REPO / "results" / name).glob("*.png"))
        assert sorted(f.name for f in out.glob("*.png")) == figures, name


def _run_dir(root: Path, name: str, method: str, segments: list[tuple[int, int]], average: float,
             overrides: list[str], train: dict | None = None) -> Path:
    """A finished run directory as `layerpeft train` leaves it (the files `report` reads)."""
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (d / "plan.json").write_text(json.dumps({"segments": [{"module": "m", "start": a, "end": b} for a, b in segments]}))
    metrics = {"status": "ok", "method": method, "average": average, "trainable_params": 1000 * len(name),
               "datasets": {"SVAMP": {"n": 10, "correct": 1, "accuracy": average}}}
    if train:
        metrics["train"] = train
    (d / "metrics.json").write_text(json.dumps(metrics))
    return d


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_ratio_sweep_figure_orders_ratios_and_draws_the_reference(tmp_path):
    runs_dir = tmp_path / "runs"
    _run_dir(runs_dir, "0", "hlpt", [(0, 23), (23, 30)], 19.0, ["method=hlpt", "layer_ratio=24:8"])
    _run_dir(runs_dir, "1", "hlpt", [(0, 5), (5, 30)], 15.0, ["method=hlpt", "layer_ratio=5:27"])
    _run_dir(runs_dir, "2", "hlpt", [(0, 15), (15, 30)], 17.0, ["method=hlpt", "layer_ratio=16:16"])
    _run_dir(runs_dir, "3", "lora", [(0, 30)], 18.0, ["method=lora"])
    runs = collect_runs([runs_dir])
    series, refs = sweep_series(runs)
    # no predictions.jsonl here: points without intervals
    assert series == {"hlpt": [(5 / 30, "5:27\n(5:25)", 15.0, None), (15 / 30, "16:16\n(15:15)", 17.0, None),
                               (23 / 30, "24:8\n(23:7)", 19.0, None)]}
    assert refs == [("lora (all layers)", 18.0, None)]
    p = subprocess.run([EXE, "report", str(runs_dir), "--out", str(tmp_path / "out")], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert _is_png(tmp_path / "out" / "ratio_sweep.png")


def test_no_ratio_figure_without_a_sweep(tmp_path):
    """Methods at their default ratios (two HLPT runs at 23:7, an H²LPT) are no sweep."""
    runs_dir = tmp_path / "runs"
    _run_dir(runs_dir, "0", "hlpt", [(0, 23), (23, 30)], 19.0, ["method=hlpt"])
    _run_dir(runs_dir, "1", "hlpt", [(0, 23), (23, 30)], 17.0, ["method=hlpt", "train.device=cuda"])
    _run_dir(runs_dir, "2", "h2lpt", [(0, 11), (11, 26), (26, 30)], 14.0, ["method=h2lpt"])
    _run_dir(runs_dir, "3", "lora", [(0, 30)], 13.0, ["method=lora"])
    assert ratio_sweep(collect_runs([runs_dir]), tmp_path) == []
    assert not (tmp_path / "ratio_sweep.png").exists()


def test_convergence_figure_averages_training_loss_per_epoch(tmp_path):
    train = {"loss_history": [[1, 4.0], [2, 2.0], [3, 1.0], [4, 0.5]], "steps_per_epoch": 2,
             "val_loss_history": [[1.0, 2.5], [2.0, 1.5]], "wall_s": 10.0}
    _run_dir(tmp_path / "runs", "a", "lora", [(0, 30)], 10.0, ["method=lora"], train)
    (run,) = collect_runs([tmp_path / "runs"])
    assert epoch_losses(run) == ([(1.0, 3.0), (2.0, 0.75)], [(1.0, 2.5), (2.0, 1.5)])
    (path,) = convergence([run], tmp_path)
    assert path.name == "convergence.png" and _is_png(path)


def test_ist_heat_map_is_drawn_from_the_run_trajectory(tmp_path):
    d = _run_dir(tmp_path / "runs", "ist", "lora", [(0, 30)], 10.0, ["method=lora", "ist.enabled=true"])
    trajectory = [{"step": s, "importance": [float(s * i) for i in range(30)], "losses": []} for s in (0, 10, 20)]
    (d / "ist.json").write_text(json.dumps({"layers": list(range(30)), "policy": "importance", "trajectory": trajectory}))
    paths = ist_heatmaps(collect_runs([tmp_path / "runs"]), tmp_path)
    assert [p.name for p in paths] == ["ist_importance_ist.png"] and _is_png(paths[0])


def test_relative_table_compares_with_the_baseline(tmp_path):
    _run_dir(tmp_path / "runs", "lora", "lora", [(0, 30)], 20.0, ["method=lora"], {"wall_s": 100.0})
    _run_dir(tmp_path / "runs", "hlpt_x", "hlpt", [(0, 23), (23, 30)], 22.5, ["method=hlpt"], {"wall_s": 80.0})
    header, rows = relative_rows(collect_runs([tmp_path / "runs"]), "lora")
    by_method = {r[1]: dict(zip(header, r)) for r in rows}
    assert by_method["hlpt"]["params (×ref)"] == 1.5 and by_method["hlpt"]["time (×ref)"] == 0.8
    assert by_method["hlpt"]["Δ Avg."] == 2.5 and by_method["lora"]["Δ Avg."] == 0.0
    p = subprocess.run([EXE, "report", str(tmp_path / "runs"), "--relative", "--baseline", "nosuch"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "no run is labelled 'nosuch'" in p.stdout


def test_above_chance_subtracts_what_the_runs_own_answers_score_shuffled(tmp_path):
    """A run that always answers the majority scores the base rate and sits at 0 above chance;
    a perfect run on a 3:1 set sits at 100 - (3/4·3/4 + 1/4·1/4)·100 = 37.5 above it."""
    gold = ["true", "true", "true", "false"]
    for name, preds in (("constant", ["true"] * 4), ("perfect", gold)):
        d = _run_dir(tmp_path / "runs", name, name, [(0, 30)], 0.0, [f"method={name}"])
        correct = sum(p == g for p, g in zip(preds, gold))
        m = json.loads((d / "metrics.json").read_text())
        m["datasets"] = {"boolq": {"n": 4, "correct": correct, "accuracy": 25.0 * correct}}
        (d / "metrics.json").write_text(json.dumps(m))
        (d / "predictions.jsonl").write_text("".join(
            json.dumps({"dataset": "boolq", "pred": p, "gold": g}) + "\n" for p, g in zip(preds, gold)))
    assert chance_accuracy([("true", "true"), ("true", "false")]) == 50.0
    header, rows = chance_rows(collect_runs([tmp_path / "runs"]))
    assert header == ["run", "method", "boolq", "Avg.", "status"]
    assert {r[1]: r[2:4] for r in rows} == {"constant": [0.0, 0.0], "perfect": [37.5, 37.5]}
    p = subprocess.run([EXE, "report", str(tmp_path / "runs"), "--above-chance"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and "| method=perfect | perfect | 37.50 | 37.50 | ok |" in p.stdout, p.stdout + p.stderr
    with open(d / "predictions.jsonl", "a") as f:  # a run killed while writing its last answer
        f.write('{"dataset": "boolq", "pred"')
    p = subprocess.run([EXE, "report", str(tmp_path / "runs"), "--above-chance"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and f"{d / 'predictions.jsonl'}:5: not a prediction record" in p.stdout, p.stdout


def test_every_committed_prediction_rescores_to_its_metrics():
    """Each committed run's answers, scored again with is_correct under the run's own scoring mode
    and the answer types today's dataset configs declare, give the per-set counts its
    metrics.json reports."""
    from layerpeft.config import compose
    from layerpeft.eval.answers import AnswerSpec, is_correct

    specs = {}
    for dataset in ("math", "commonsense"):
        for name, e in compose("train", [f"dataset={dataset}"]).dataset.evals.items():
            specs[name] = AnswerSpec(e.answer_type, tuple(e.get("words") or ()))

    runs = [d for d in sorted((REPO / "results").iterdir()) if (d / "predictions.jsonl").is_file()]
    assert len(runs) >= 25
    for d in runs:
        metrics = json.loads((d / "metrics.json").read_text())
        counts: dict[str, list[int]] = {}
        for line in (d / "predictions.jsonl").read_text().splitlines():
            x = json.loads(line)
            ok = is_correct(specs[x["dataset"]], x["response"], x["gold"], mode=metrics.get("scoring", "strict"))
            counts.setdefault(x["dataset"], []).append(int(ok))
        got = {k: (len(v), sum(v)) for k, v in counts.items()}
        assert got == {k: (m["n"], m["correct"]) for k, m in metrics["datasets"].items()}, d.name
