"""``layerpeft prepare-data``: fill a data directory with the LLM-Adapters benchmark files.

From a local copy (``--from ../shared/data``) or, on a machine with internet, from the public
LLM-Adapters repository at a pinned commit. Every file is fetched into a staging directory and
checked to be LLM-Adapters JSON; only when all of them are good do they replace the files in
the data directory, so a bad source never damages a good copy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path

from layerpeft.data.files import DataError
from layerpeft.data.sources import load_source

REPO_RAW = "https://raw.githubusercontent.com/AGI-Edgerunners/LLM-Adapters/816657208af4db747803f87ba40a4c71383fed7a"
MATH_TESTS = ["AQuA", "AddSub", "MultiArith", "SVAMP", "SingleEq", "gsm8k", "mawps", "mathqa"]
COMMONSENSE = ["ARC-Challenge", "ARC-Easy", "boolq", "openbookqa", "piqa", "social_i_qa", "winogrande", "hellaswag"]

# local name (under the data dir) → path in the LLM-Adapters repository
FILES = {"math/math_data.json": "ft-training_set/math_data.json"}
FILES.update({f"math/{t}_test.json": f"dataset/{t}/test.json" for t in MATH_TESTS})
FILES.update({f"commonsense/{t}_{s}.json": f"dataset/{t}/{s}.json" for t in COMMONSENSE for s in ("train", "test")})


def prepare(dest: Path, source: Path | None) -> tuple[list[str], list[str]]:
    """Copy or download every known file; returns (prepared, unavailable)."""
    if source is not None and source.resolve() == dest.resolve():
        raise DataError(f"--from {source} and --to {dest} are the same directory")
    dest.mkdir(parents=True, exist_ok=True)
    done, missing = [], []
    with tempfile.TemporaryDirectory(prefix=".prepare-", dir=dest) as staging:
        for local, remote in FILES.items():
            target = Path(staging) / local
            target.parent.mkdir(parents=True, exist_ok=True)
            if source is not None:
                src = source / local
                if not src.is_file():
                    missing.append(f"{local} (not in {source})")
                    continue
                shutil.copyfile(src, target)
            else:
                try:
                    urllib.request.urlretrieve(f"{REPO_RAW}/{remote}", target)
                except OSError as e:
                    missing.append(f"{local} ({e})")
                    continue
            origin = str(source / local) if source is not None else f"{REPO_RAW}/{remote}"
            try:
                load_source({"path": str(target)}, None, Path(staging), local.endswith("_test.json"), local)
            except DataError as e:  # name the file the user gave, not its staged copy
                raise DataError(str(e).replace(str(target), origin)) from None
            done.append(local)
        for local in done:  # every file checked: now they replace the old ones
            (dest / local).parent.mkdir(parents=True, exist_ok=True)
            os.replace(Path(staging) / local, dest / local)
    return done, missing


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="layerpeft prepare-data", description=__doc__)
    ap.add_argument("--to", type=Path, default=Path("data"), help="data directory to fill (default: data/)")
    ap.add_argument("--from", dest="source", type=Path, default=None,
                    help="local copy to read from instead of downloading (e.g. ../shared/data)")
    args = ap.parse_args(argv)
    try:
        done, missing = prepare(args.to, args.source)
    except DataError as e:
        print(f"layerpeft prepare-data: error: {e}", file=sys.stderr)
        return 2
    print(f"prepared {len(done)} files in {args.to}")
    for m in missing:
        print(f"  unavailable: {m}")
    return 0 if done else 2
