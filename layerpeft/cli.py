"""The ``layerpeft`` console script: ``train``, ``eval``, ``plan`` (Hydra) and ``report``.

Hydra subcommands hand the remaining arguments to Hydra unchanged, so every Hydra feature
works (``-m`` multirun, ``--cfg job``, overrides); each one composes ``conf/<command>.yaml``.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from layerpeft.config import CONF_DIR
from layerpeft.data.files import DataError
from layerpeft.errors import TrainingDiverged, UserError
from layerpeft.plan import PlanError
from layerpeft.rundir import holds_run
from layerpeft.sweep import FAILED

HYDRA_COMMANDS = ("train", "eval", "plan")
#: What a command refuses with one line and exit code 2 (OSError: a missing file, or a model the
#: hub did not deliver: no network, no such id)
REFUSALS = (PlanError, DataError, TrainingDiverged, UserError, OSError)
USAGE = """usage: layerpeft {train,eval,plan,report,export,lm-eval,prepare-data} [args...]

  train   train (and evaluate) a PEFT method:   layerpeft train method=hlpt model=llama7b
  eval    zero-shot evaluation of a run or a base model
  plan    show a layer plan and its parameter counts (no weights needed)
  report  tables from run or sweep directories:  layerpeft report outputs/multirun/...
  export  a run as a merged model or a peft adapter:  layerpeft export RUN --merged OUT | --peft OUT
  lm-eval lm-evaluation-harness with runs as models:  layerpeft lm-eval --model layerpeft --model_args run=RUN --tasks T
  prepare-data  fill data/ with the benchmark files:  layerpeft prepare-data [--from ../shared/data]
"""


def _protect_existing_runs(command: str, argv: list[str]) -> list[str]:
    """Before Hydra writes its files into a ``hydra.run.dir``/``hydra.sweep.dir`` that already
    holds runs: refuse a new run there, and let a resume keep the run's own ``.hydra/`` (its
    original overrides, which report labels read) by asking Hydra not to write it."""
    if command != "train":
        return argv
    resume = "train.resume=true" in argv
    for arg in argv:
        key, _, value = arg.partition("=")
        if key not in ("hydra.run.dir", "hydra.sweep.dir") or not value or not holds_run(Path(value)):
            continue
        if not resume:
            print(f"layerpeft {command}: error: {key}={value} already holds a run: pass train.resume=true to "
                  "continue it, or choose another directory", file=sys.stderr)
            sys.exit(2)
        if key == "hydra.run.dir" and (Path(value) / ".hydra").is_dir() and not any(
                a.startswith("hydra.output_subdir=") for a in argv):
            return [*argv, "hydra.output_subdir=null"]
    return argv


def _run_hydra(command: str, argv: list[str]) -> None:
    argv = _protect_existing_runs(command, argv)

    @hydra.main(config_path=CONF_DIR, config_name=command, version_base=None)
    def task(cfg: DictConfig) -> None:
        # imported once a job runs: `--help`, `--cfg` and shell completion need no torch
        module = importlib.import_module(f"layerpeft.commands.{command}")
        try:
            return module.run(cfg)
        except REFUSALS as e:
            for line in str(e).splitlines()[:1] if isinstance(e, OSError) else str(e).splitlines():
                print(f"layerpeft {command}: error: {line}", file=sys.stderr)
            sys.exit(2)

    # "layerpeft" as the program name: shell completion registers itself for it and calls it back
    # as `layerpeft -sc query=bash` (``_complete``).
    sys.argv = ["layerpeft", *argv]
    task()
    if FAILED:  # a sweep's summary has been printed: its exit code says that jobs failed
        sys.exit(1)


COMMANDS = ("train", "eval", "plan", "report", "export", "lm-eval", "prepare-data")


def _complete(argv: list[str]) -> None:
    """Shell completion's query (``layerpeft -sc query=bash``, the command line in $COMP_LINE):
    the commands, or the Hydra command's own completion of the line without the command word."""
    import os

    words = os.environ.get("COMP_LINE", "").split()
    if len(words) >= 2 and words[1] in HYDRA_COMMANDS and (len(words) > 2 or os.environ["COMP_LINE"].endswith(" ")):
        os.environ["COMP_LINE"] = " ".join([words[0], *words[2:]]) + (" " if os.environ["COMP_LINE"].endswith(" ") else "")
        _run_hydra(words[1], argv)
    else:
        print(" ".join(COMMANDS))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-sc"], ["--shell-completion"]) and any(a.startswith("query=") for a in argv):
        _complete(argv)
        return
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command in HYDRA_COMMANDS:
        _run_hydra(command, rest)
    elif command == "report":
        from layerpeft.commands.report import main as report_main

        sys.exit(report_main(rest))
    elif command == "lm-eval":
        try:
            from layerpeft.integrations.lm_eval import cli as lm_eval_cli
        except ImportError as e:
            print(f"layerpeft lm-eval: error: lm-evaluation-harness is not installed ({e}); "
                  "pip install -e '.[lmeval]'", file=sys.stderr)
            sys.exit(2)
        sys.exit(lm_eval_cli(rest))
    elif command == "export":
        from layerpeft.commands.export import main as export_main

        sys.exit(export_main(rest))
    elif command == "prepare-data":
        from layerpeft.data.prepare import main as prepare_main

        sys.exit(prepare_main(rest))
    else:
        print(f"layerpeft: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
