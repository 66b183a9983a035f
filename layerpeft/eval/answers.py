"""Reading answers out of generated text and scoring them (DESIGN.md §4).

``mode="parity"`` reproduces LLM-Adapters' evaluate scripts exactly; ``mode="strict"`` (the
default) differs only where those rules misread answers: AQuA's reference takes the first
capital A–E anywhere in the response, so "A man walks…" reads as option A; strict reads
"answer is (X)" and otherwise the last parenthesised option.
"""

from __future__ import annotations

import math
import re

MODES = ("strict", "parity")
_NUMBER = re.compile(r"-?\d+\.?\d*")
# Commonsense tasks: the answer is the first of these words in the response.
_WORDS = {
    "boolq": r"true|false",
    "piqa": r"solution1|solution2",
    "social_i_qa": r"answer1|answer2|answer3|answer4|answer5",
    "arc-challenge": r"answer1|answer2|answer3|answer4|answer5",
    "arc-easy": r"answer1|answer2|answer3|answer4|answer5",
    "openbookqa": r"answer1|answer2|answer3|answer4|answer5",
    "hellaswag": r"ending1|ending2|ending3|ending4",
    "winogrande": r"option1|option2",
}
_OPTION_SETS = ("aqua",)


def answer_kind(dataset: str) -> str:
    key = dataset.lower()
    if key in _OPTION_SETS:
        return "option"
    if key in _WORDS:
        return "word"
    return "number"


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


def extract_word(dataset: str, response: str) -> str | None:
    found = re.findall(_WORDS[dataset.lower()], response.strip())
    return found[0] if found else None


def extract(dataset: str, response: str, mode: str = "strict"):
    kind = answer_kind(dataset)
    if kind == "number":
        return extract_number(response)
    if kind == "option":
        return extract_option(response, mode)
    return extract_word(dataset, response)


def is_correct(dataset: str, response: str, gold: str, mode: str = "strict") -> bool:
    """Whether ``response`` answers ``gold`` for the evaluation set ``dataset``."""
    if mode not in MODES:
        raise ValueError(f"scoring mode {mode!r} is not one of {', '.join(MODES)}")
    pred = extract(dataset, response, mode)
    if pred is None:
        return False
    if answer_kind(dataset) == "number":
        try:
            target = float(str(gold).replace(",", ""))
        except ValueError:
            return False
        return math.isfinite(pred) and abs(pred - target) <= 1e-3
    return pred == str(gold).strip()
