"""Errors the CLI prints as one line without a traceback: bad input the user can fix, and a run
that diverged. They live here, apart from the code that raises them, so the CLI can catch them
without importing torch."""

from __future__ import annotations

from typing import Any


class UserError(Exception):
    """Bad input (a missing run directory, a missing dataset choice, …)."""


class TrainingDiverged(RuntimeError):
    """The loss, a parameter or the validation loss became NaN/inf: the run stops, keeps its last
    verified checkpoint, saves no adapter and ends ``status: diverged``. ``record`` holds the
    training history up to that point (for metrics.json)."""

    def __init__(self, message: str, record: dict[str, Any] | None = None):
        super().__init__(message)
        self.record = record or {}
