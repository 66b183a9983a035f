"""``layerpeft export RUN --merged OUT`` / ``--peft OUT``: a run's adapter for other tools
(``layerpeft/export.py``): a merged Hugging Face model directory, or Hugging Face peft's layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from layerpeft.errors import UserError


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="layerpeft export", description=__doc__)
    ap.add_argument("run", type=Path, help="a finished run directory")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--merged", type=Path, metavar="OUT",
                      help="a standard model directory with the modules folded into the weights (AutoModelForCausalLM)")
    what.add_argument("--peft", type=Path, metavar="OUT",
                      help="the adapter in peft's layout with its real base (AutoPeftModelForCausalLM)")
    args = ap.parse_args(argv)
    out = args.merged or args.peft
    if out.exists() and any(out.iterdir()):
        print(f"layerpeft export: error: {out} is not empty; choose a new directory")
        return 2
    from layerpeft.export import export_merged, export_run_peft

    try:
        written = export_merged(args.run, out) if args.merged else export_run_peft(args.run, out)
    except UserError as e:
        print(f"layerpeft export: error: {e}")
        return 2
    print(f"wrote {written}")
    return 0
