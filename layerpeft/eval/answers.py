"""Reading answers out of generated text and scoring them, by the answer type each evaluation set
declares (its dataset config): ``number``, ``option``, ``word`` or ``exact``.

- ``number``: strip commas, the last number (``-?\\d+\\.?\\d*``) is the answer, right when within
  1e-3 of the gold; no number is wrong (LLM-Adapters' math rule).
- ``option``: a letter A–E. ``parity`` takes the first capital A–E anywhere in the response, as
  LLM-Adapters' evaluate.py does (it reads "A man walks…" as option A); ``strict`` (default)
  reads "answer is (X)", else the last parenthesised option.
- ``word``: the first of a closed set of words (``words``: BoolQ's true/false, PIQA's
  solution1/2, …), LLM-Adapters' commonsense rule; without ``words`` the set is the gold answers
  the evaluation set uses.
- ``exact``: normalised exact match (case, surrounding whitespace and punctuation, repeated
  spaces ignored) of the text after the last "answer is", or of the whole response.
"""

from __future__ import annotations

import math
import re
import string

from layerpeft.data.answer_types import ANSWER_TYPES, AnswerSpec

MODES = ("strict", "parity")
_NUMBER = re.compile(r"-?\d+\.?\d*")
__all__ = ["ANSWER_TYPES", "AnswerSpec", "MODES", "extract", "is_correct"]


def extract_number(response: str) -> float | None:
    found = _NUMBER.findall(response.replace(",", ""))
    if not found:
        return None
    try:
        return float(found[-1])
    except ValueError:
        return None


def extract_option(response: str, mode: str = "strict") -> str | None:
    if mode == "parity":
        found = re.findall(r"A|B|C|D|E", response.strip())
        return found[0] if found else None
    m = re.search(r"answer is:?\s*\(?([A-E])\b\)?", response)
    if m:
        return m.group(1)
    found = re.findall(r"\(([A-E])\)", response)
    return found[-1] if found else None


def extract_word(words: tuple[str, ...], response: str) -> str | None:
    found = re.findall("|".join(map(re.escape, words)), response.strip()) if words else []
    return found[0] if found else None


def normalise(text: str) -> str:
    """Lower case, single spaces, no surrounding whitespace, punctuation or quotes."""
    return " ".join(text.lower().split()).strip(string.punctuation + string.whitespace + "“”‘’")


def extract_exact(response: str) -> str:
    tail = re.split(r"answer is:?", response, flags=re.IGNORECASE)[-1]
    return normalise(tail)


def extract(spec: AnswerSpec, response: str, mode: str = "strict"):
    if spec.type == "number":
        return extract_number(response)
    if spec.type == "option":
        return extract_option(response, mode)
    if spec.type == "word":
        return extract_word(spec.words, response)
    return extract_exact(response)


def is_correct(spec: AnswerSpec, response: str, gold: str, mode: str = "strict") -> bool:
    """Whether ``response`` answers ``gold`` under ``spec``."""
    if mode not in MODES:
        raise ValueError(f"scoring mode {mode!r} is not one of {', '.join(MODES)}")
    pred = extract(spec, response, mode)
    if pred is None:
        return False
    if spec.type == "number":
        try:
            target = float(str(gold).replace(",", ""))
        except ValueError:
            return False
        return math.isfinite(pred) and abs(pred - target) <= 1e-3
    if spec.type == "exact":
        return pred == normalise(str(gold))
    return pred == str(gold).strip()
