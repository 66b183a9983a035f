"""``layerpeft report DIR…``: one table row per run (e.g. per ratio of a sweep) as markdown + CSV,
and with ``--out`` the figures the runs support (ratio sweep, loss per epoch, IST heat maps)."""

from __future__ import annotations

import argparse
from pathlib import Path

from layerpeft.report.tables import (COMPARISON_COLUMNS, chance_rows, collect_runs, comparison_rows, csv_text,
                                     efficiency_rows, markdown, relative_rows, table_rows)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="layerpeft report", description=__doc__)
    ap.add_argument("dirs", nargs="+", help="run directories or sweep directories")
    ap.add_argument("--out", type=Path, default=None, help="write report.md and report.csv here")
    ap.add_argument("--efficiency", action="store_true",
                    help="the PEFT survey's efficiency table (params, memory, throughput, adapter size)")
    ap.add_argument("--relative", action="store_true",
                    help="parameters, training time and accuracy relative to --baseline (HLPT Table 5)")
    ap.add_argument("--above-chance", action="store_true",
                    help="each accuracy minus what the run's own answers score when shuffled across the "
                         "questions (from predictions.jsonl): near 0 means the answer format was learnt, "
                         "not the task")
    ap.add_argument("--baseline", default=None,
                    help="run label, directory name or method to compare with: alone, every cell's difference to it "
                         "with a paired 95 %% bootstrap interval and p-value (and comparison.csv with --out); with "
                         "--efficiency/--relative, the reference of those tables (--efficiency default: a `full` run)")
    args = ap.parse_args(argv)
    try:
        runs = collect_runs(args.dirs)
    except FileNotFoundError as e:
        print(f"layerpeft report: error: {e}")
        return 2
    if not runs:
        print(f"layerpeft report: error: no run directories (with metrics.json) under {' '.join(args.dirs)}")
        return 2
    if args.relative and not args.baseline:
        print("layerpeft report: error: --relative needs --baseline RUN_OR_METHOD")
        return 2
    comparison = None
    try:
        if args.efficiency:
            header, rows = efficiency_rows(runs, args.baseline)
        elif args.relative:
            header, rows = relative_rows(runs, args.baseline)
        elif args.above_chance:
            header, rows = chance_rows(runs)
        else:
            header, rows = table_rows(runs)
            if args.baseline:
                comparison = comparison_rows(runs, args.baseline)
    except ValueError as e:
        print(f"layerpeft report: error: {e}")
        return 2
    md, csv_ = markdown(header, rows), csv_text(header, rows)
    print(md)
    if comparison:
        print()
        print(markdown(*comparison[:2]))
        print("\n* the 95 % interval (paired bootstrap over questions, stratified by set; seeds resampled too) "
              "excludes 0. p: exact McNemar on the pooled questions for single runs, else the bootstrap's.")
    if args.out:
        from layerpeft.report.figures import all_figures

        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.md").write_text(md + "\n" + (f"\n{markdown(*comparison[:2])}\n" if comparison else ""))
        (args.out / "report.csv").write_text(csv_)
        written = [args.out / "report.md", args.out / "report.csv"]
        if comparison:
            (args.out / "comparison.csv").write_text(csv_text(COMPARISON_COLUMNS, comparison[2]))
            written.append(args.out / "comparison.csv")
        written += all_figures(runs, args.out)
        print("wrote " + ", ".join(str(p) for p in written))
    return 0
