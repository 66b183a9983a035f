"""The headline comparison: LoRA, HLPT, H2LPT and prefix tuning, and LoRA at HLPT's learning rate
(3e-3, which separates the method from its learning rate), each with several seeds, on
SmolLM2-135M with the math protocol and 1,000 training examples. Then the paired report.

    python scripts/headline.py OUT [--seeds 42,43,44] [--jobs N] [--threads T] [--cells a,b] [key=value ...]

Each cell is one ``layerpeft train -m … seed=…`` sweep under OUT/<cell>; ``--jobs`` cells run side
by side (on a GPU several fit at once; on a 2-core CPU ``--jobs 2 --threads 1`` keeps both cores
busy), each with ``OMP_NUM_THREADS=--threads``. Every run saves checkpoints and is started with
``train.resume=true``, so running the same command again resumes what an interruption left.
Trailing ``key=value`` overrides replace the protocol's own (same key) or add to it. At the end:

    layerpeft report OUT --baseline method=lora --out OUT/report

Before anything is written, every run is checked as ``layerpeft train`` checks it (config,
settings, data files, weights, memory); a problem is one line naming the cell, exit status 2.
A cell's log is OUT/<cell>.log. The exit status is 1 when any run failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

EXE = str(Path(sys.executable).with_name("layerpeft"))

#: The protocol every cell shares (a trailing override with the same key replaces it).
PROTOCOL = ["model=smollm2_135m", "dataset=math", "data.train_size=1000", "logger=none",
            "train.save_steps=25", "train.resume=true"]

#: Cell name → what distinguishes it. ``lora_lr3e-3`` is LoRA at HLPT's learning rate.
CELLS = {
    "lora": ["method=lora"],
    "hlpt": ["method=hlpt"],
    "h2lpt": ["method=h2lpt"],
    "prefix": ["method=prefix"],
    "lora_lr3e-3": ["method=lora", "train.lr=3e-3"],
}


def merged(*groups: list[str]) -> list[str]:
    """Overrides by key, a later group replacing an earlier one's value for the same key (Hydra
    refuses the same key twice on one command line)."""
    by_key: dict[str, str] = {}
    for group in groups:
        for item in group:
            key, sep, _ = item.partition("=")
            if not sep:
                raise ValueError(f"{item!r} is not a key=value override")
            by_key[key] = item
    return list(by_key.values())


def check_cells(cells: list[str], seeds: str, overrides: list[str], out: Path) -> str | None:
    """Each run checked as ``layerpeft train`` checks it before writing anything (its config
    composes, its settings are valid, the data files are there, the weights are reachable, it
    fits the machine): the first problem as one line naming the cell, before any directory is
    made; ``None`` when every run would start."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from layerpeft.cli import REFUSALS
    from layerpeft.commands.train import prepare
    from layerpeft.config import compose

    refusals = (HydraException, OmegaConfBaseException, *REFUSALS)

    try:
        composed = {c: merged(PROTOCOL, CELLS[c], overrides) for c in cells}
    except ValueError as e:
        return str(e)
    for cell, items in composed.items():
        for seed in seeds.split(","):
            try:
                # a directory that holds no run: the resume checks are each run's own, at its start
                prepare(compose("train", [*items, f"seed={seed}"]), out / cell / "(new)")
            except refusals as e:
                return f"cell {cell}, seed={seed}: {str(e).splitlines()[0]}"
    return None


def run_cell(name: str, out: Path, seeds: str, threads: int, overrides: list[str]) -> int:
    cmd = [EXE, "train", "-m", *merged(PROTOCOL, CELLS[name], overrides), f"seed={seeds}",
           f"hydra.sweep.dir={out / name}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with open(out / f"{name}.log", "a") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--jobs", type=int, default=1, help="cells run side by side")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="OMP_NUM_THREADS of each cell")
    ap.add_argument("--cells", default=",".join(CELLS), help=f"a subset of {','.join(CELLS)}")
    ap.add_argument("overrides", nargs="*", help="key=value, replacing the protocol's value for that key")
    args = ap.parse_intermixed_args(argv)  # overrides may follow the options
    cells = args.cells.split(",")
    unknown = [c for c in cells if c not in CELLS]
    if unknown:
        ap.error(f"unknown cell(s) {', '.join(unknown)}; the cells are {', '.join(CELLS)}")
    refused = check_cells(cells, args.seeds, args.overrides, args.out)
    if refused:
        print(f"headline: error: {refused}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        codes = dict(zip(cells, pool.map(lambda c: run_cell(c, args.out, args.seeds, args.threads, args.overrides),
                                         cells)))
    for cell, code in codes.items():
        print(f"{cell}: {'ok' if code == 0 else f'exit {code} (see {args.out / cell}.log)'}")
    report = [EXE, "report", str(args.out), "--out", str(args.out / "report")]
    if "lora" in cells:
        # the LoRA cell's label is "method=lora" beside other methods, its method's name when every
        # cell is LoRA (the report labels a cell by what it does not share with the others)
        report[3:3] = ["--baseline", "method=lora" if set(cells) - {"lora", "lora_lr3e-3"} else "lora"]
    print("$ " + " ".join(report))
    code = subprocess.run(report).returncode
    return 1 if code or any(codes.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
