"""``layerpeft report DIR…``: one table row per run (e.g. per ratio of a sweep) as markdown + CSV."""

from __future__ import annotations

import argparse
from pathlib import Path

from layerpeft.report.tables import collect_runs, csv_text, efficiency_rows, markdown, table_rows


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="layerpeft report", description=__doc__)
    ap.add_argument("dirs", nargs="+", help="run directories or sweep directories")
    ap.add_argument("--out", type=Path, default=None, help="write report.md and report.csv here")
    ap.add_argument("--efficiency", action="store_true",
                    help="the PEFT survey's efficiency table (params, memory, throughput, adapter size)")
    ap.add_argument("--baseline", default=None,
                    help="run label or method that --efficiency is relative to (default: a `full` run)")
    args = ap.parse_args(argv)
    try:
        runs = collect_runs(args.dirs)
    except FileNotFoundError as e:
        print(f"layerpeft report: error: {e}")
        return 2
    if not runs:
        print(f"layerpeft report: error: no run directories (with metrics.json) under {' '.join(args.dirs)}")
        return 2
    header, rows = efficiency_rows(runs, args.baseline) if args.efficiency else table_rows(runs)
    md, csv_ = markdown(header, rows), csv_text(header, rows)
    print(md)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.md").write_text(md + "\n")
        (args.out / "report.csv").write_text(csv_)
        print(f"wrote {args.out / 'report.md'} and {args.out / 'report.csv'}")
    return 0
