"""What an evaluation set declares about its answers (its dataset config's ``answer_type``);
``eval/answers.py`` reads and scores them accordingly."""

from __future__ import annotations

from dataclasses import dataclass

ANSWER_TYPES = ("number", "option", "word", "exact")


@dataclass(frozen=True)
class AnswerSpec:
    """One evaluation set's answer type, and for ``word`` sets the closed set of words."""

    type: str
    words: tuple[str, ...] = ()

    def __post_init__(self):
        if self.type not in ANSWER_TYPES:
            raise ValueError(f"answer_type {self.type!r} is not one of {', '.join(ANSWER_TYPES)}")
