"""Answer extraction and scoring (DESIGN.md §4), strict and LLM-Adapters parity modes."""

from __future__ import annotations

import pytest

from layerpeft.eval.answers import extract, is_correct


@pytest.mark.parametrize(
    "response,gold,ok",
    [
        ("He has 16 - 12 = 4 kids. The answer is 4.", "4.0", True),
        ("The total is 1,234 apples.", "1234.0", True),
        ("The answer is 3.5", "3.5", True),
        ("The answer is -7.", "-7.0", True),
        ("It is 4.0004", "4.0", True),  # within 1e-3
        ("It is 4.01", "4.0", False),
        ("I do not know.", "4.0", False),  # no number is wrong
        ("First 3, then 5, so 8.", "8.0", True),  # the last number counts
    ],
)
def test_math_numbers(response, gold, ok):
    for mode in ("strict", "parity"):
        assert is_correct("GSM8K", response, gold, mode=mode) is ok


def test_aqua_parity_misreads_a_leading_capital_a_and_strict_does_not():
    response = "A man walks 3 km. So the answer is (C)."
    assert extract("AQuA", response, "parity") == "A"
    assert not is_correct("AQuA", response, "C", mode="parity")
    assert is_correct("AQuA", response, "C", mode="strict")
    assert is_correct("AQuA", "Options considered... (B) is right", "B")
    assert not is_correct("AQuA", "no idea", "B")


@pytest.mark.parametrize(
    "dataset,response,gold",
    [
        ("boolq", "the correct answer is false", "false"),
        ("piqa", "the correct answer is solution2", "solution2"),
        ("social_i_qa", "the correct answer is answer3", "answer3"),
        ("ARC-Challenge", "the correct answer is answer1", "answer1"),
        ("winogrande", "the correct answer is option2", "option2"),
        ("hellaswag", "the correct answer is ending4", "ending4"),
    ],
)
def test_commonsense_words(dataset, response, gold):
    assert is_correct(dataset, response, gold)
    assert not is_correct(dataset, "no answer given", gold)


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="scoring mode 'lenient'"):
        is_correct("GSM8K", "4", "4", mode="lenient")
