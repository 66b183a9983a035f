"""Where the data lives, and the error every bad data input raises.

Reading the examples themselves goes through ``data/sources.py`` (Hugging Face ``datasets``).
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "LAYERPEFT_DATA"


class DataError(ValueError):
    """A data source that is missing, unreadable or not in the expected layout."""


def data_dir(configured: str | os.PathLike | None) -> Path:
    """``data.dir`` if set, else ``$LAYERPEFT_DATA``, else ``data/``."""
    return Path(configured or os.environ.get(DATA_ENV) or "data").expanduser()
