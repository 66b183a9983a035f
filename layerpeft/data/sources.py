"""Reading examples from where a dataset config says they are, through Hugging Face ``datasets``.

A *source* is a local file (``path``: JSON list, JSONL, CSV or Parquet, by extension) or a hub
dataset (``hub``, with ``config`` and ``split``). Its rows become LLM-Adapters examples
(``instruction``, ``input``, ``output``, ``answer``) through a column mapping, so any table whose
columns hold a question, an optional context, a target text and a gold answer can train or be
scored. Relative paths resolve against ``data.dir`` first, then the working directory.
A missing or unreadable source, a missing column or an empty gold answer fails with one line
naming the source, before any training starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from layerpeft.data.files import DataError

FIELDS = ("instruction", "input", "output", "answer")
LOADERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def describe(spec: dict[str, Any]) -> str:
    if spec.get("hub"):
        return f"{spec['hub']}" + (f" ({spec['config']})" if spec.get("config") else "") + f" [{spec.get('split') or 'train'}]"
    return str(spec.get("path"))


def check_source(spec: Any, where: str) -> None:
    """A source names exactly one of ``path`` and ``hub``, and a local file type ``datasets`` reads."""
    if not isinstance(spec, dict):
        raise DataError(f"{where}: expected a source ({{path: FILE}} or {{hub: ID}}), got {spec!r}")
    if bool(spec.get("path")) == bool(spec.get("hub")):
        raise DataError(f"{where}: give exactly one of path=FILE or hub=DATASET_ID")
    if spec.get("path") and Path(str(spec["path"])).suffix.lower() not in LOADERS:
        raise DataError(f"{where}.path={spec['path']}: the file type must be one of {', '.join(LOADERS)}")


def resolve_path(path: str, root: Path) -> Path:
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    return root / p if (root / p).exists() or not p.exists() else p


def load_source(spec: dict[str, Any], columns: dict[str, str] | None, root: Path, need_answer: bool,
                where: str) -> list[dict[str, str]]:
    """The source's rows as LLM-Adapters examples (``columns`` maps each field to its column)."""
    import datasets

    check_source(spec, where)
    columns = {f: (columns or {}).get(f) or f for f in FIELDS}
    if spec.get("path"):
        path = resolve_path(str(spec["path"]), root)
        if not path.is_file():
            raise DataError(f"{path}: file not found (set data.dir or $LAYERPEFT_DATA; `layerpeft prepare-data` "
                            "fills it)")
        name = str(path)
        # a local file reads in well under a second: its "Generating train split" bar (one per set,
        # seven for the math protocol) would only bury the console header and any error line
        was_enabled = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            table = datasets.load_dataset(LOADERS[path.suffix.lower()], data_files=str(path), split="train")
        except Exception as e:  # datasets wraps parse errors in several types
            raise DataError(f"{path}: not readable as {path.suffix[1:].upper()} ({_reason(e)})") from None
        finally:
            if was_enabled:
                datasets.enable_progress_bars()
    else:
        name = describe(spec)
        try:
            table = datasets.load_dataset(spec["hub"], spec.get("config"), split=spec.get("split") or "train")
        except Exception as e:
            raise DataError(f"{where}: hub dataset {name} could not be loaded ({_reason(e)})") from None
    need = ["instruction"] + (["answer"] if need_answer else ["output"])
    missing = [f"{f} (column {columns[f]!r})" for f in need if columns[f] not in table.column_names]
    if missing:
        raise DataError(f"{name}: no column for {', '.join(missing)}; it has {', '.join(table.column_names)} "
                        f"(map them with dataset.columns.FIELD=COLUMN)")
    if len(table) == 0:
        raise DataError(f"{name}: no examples")
    examples = []
    for i, row in enumerate(table):
        ex = {f: row.get(columns[f]) for f in FIELDS if columns[f] in table.column_names}
        ex = {f: ("" if v is None else str(v) if not isinstance(v, str) else v) for f, v in ex.items()}
        ex.setdefault("input", "")
        if need_answer and not ex["answer"].strip():  # (an empty output still trains the EOS)
            raise DataError(f"{name}: item {i} has an empty answer (it could only be scored wrong)")
        examples.append(ex)
    return examples


def _reason(e: Exception) -> str:
    cause = e
    while cause.__cause__ is not None:
        cause = cause.__cause__
    return f"{type(cause).__name__}: {cause}"[:300]
