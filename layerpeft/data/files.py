"""LLM-Adapters JSON files: locating, reading and checking them.

Every file is a JSON list of ``{instruction, input, output, answer}``. A missing or malformed
file fails with the file's path and the reason, before any training starts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

DATA_ENV = "LAYERPEFT_DATA"
REQUIRED = ("instruction", "output")


class DataError(ValueError):
    """A data file that is missing or not in LLM-Adapters format."""


def data_dir(configured: str | os.PathLike | None) -> Path:
    """``data.dir`` if set, else ``$LAYERPEFT_DATA``, else ``data/``."""
    return Path(configured or os.environ.get(DATA_ENV) or "data").expanduser()


def read_examples(path: Path, need_answer: bool = False) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(
            f"{path}: file not found (set data.dir or ${DATA_ENV}; `layerpeft prepare-data` fills it)"
        )
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(items, list) or not items:
        raise DataError(f"{path}: expected a non-empty JSON list of examples")
    need = REQUIRED + (("answer",) if need_answer else ())
    for i, ex in enumerate(items):
        if not isinstance(ex, dict):
            raise DataError(f"{path}: item {i} is {type(ex).__name__}, not an object")
        missing = [k for k in need if not isinstance(ex.get(k), str)]
        if missing:
            raise DataError(f"{path}: item {i} lacks string field(s) {', '.join(missing)}")
        if need_answer and not ex["answer"].strip():
            raise DataError(f"{path}: item {i} has an empty answer (it could only be scored wrong)")
    return items
