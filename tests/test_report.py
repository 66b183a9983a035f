"""`layerpeft report` regenerates the committed results table from the committed run files."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from conftest import REPO

EXE = str(Path(sys.executable).with_name("layerpeft"))


def test_report_reproduces_the_committed_math_results(tmp_path):
    runs = [REPO / "results" / "hlpt_smollm2_math1000", REPO / "results" / "base_smollm2_math"]
    p = subprocess.run([EXE, "report", *map(str, runs), "--out", str(tmp_path)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = {r["method"]: r for r in csv.DictReader(open(tmp_path / "report.csv"))}
    assert round(float(rows["hlpt"]["Avg."]), 2) == 19.22 and rows["hlpt"]["layers"] == "23:7"
    assert round(float(rows["none"]["Avg."]), 2) == 1.81
    readme = (REPO / "README.md").read_text()
    for method in ("hlpt", "none"):  # the README's figures are the ones the report computes
        r = rows[method]
        cells = [f"{float(r[k]):.2f}" for k in ("SVAMP", "AQuA", "AddSub", "MultiArith", "SingleEq", "GSM8K", "Avg.")]
        assert " | ".join(cells) in readme
