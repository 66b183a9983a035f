"""Answer extraction and scoring by answer type, strict and LLM-Adapters parity modes."""

from __future__ import annotations

import pytest

from layerpeft.eval.answers import AnswerSpec, extract, is_correct

NUMBER, OPTION, EXACT = AnswerSpec("number"), AnswerSpec("option"), AnswerSpec("exact")


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
        assert is_correct(NUMBER, response, gold, mode=mode) is ok


def test_aqua_parity_misreads_a_leading_capital_a_and_strict_does_not():
    response = "A man walks 3 km. So the answer is (C)."
    assert extract(OPTION, response, "parity") == "A"
    assert not is_correct(OPTION, response, "C", mode="parity")
    assert is_correct(OPTION, response, "C", mode="strict")
    assert is_correct(OPTION, "Options considered... (B) is right", "B")
    assert not is_correct(OPTION, "no idea", "B")


@pytest.mark.parametrize(
    "words,response,gold",
    [
        (("true", "false"), "the correct answer is false", "false"),
        (("solution1", "solution2"), "the correct answer is solution2", "solution2"),
        (("answer1", "answer2", "answer3", "answer4", "answer5"), "the correct answer is answer3", "answer3"),
        (("option1", "option2"), "the correct answer is option2", "option2"),
        (("ending1", "ending2", "ending3", "ending4"), "the correct answer is ending4", "ending4"),
    ],
)
def test_words(words, response, gold):
    spec = AnswerSpec("word", words)
    assert is_correct(spec, response, gold)
    assert not is_correct(spec, "no answer given", gold)
    assert extract(spec, f"{words[1]} or {words[0]}") == words[1]  # the first word in the response


def test_exact_matches_after_normalising():
    assert is_correct(EXACT, "  The answer is Paris. ", "paris")
    assert is_correct(EXACT, "City0", "City0") and is_correct(EXACT, '"new   york"', "New York")
    assert not is_correct(EXACT, "The answer is Lyon", "Paris")
    assert not is_correct(EXACT, "Paris, France", "Paris")


def test_unknown_mode_and_type_are_rejected():
    with pytest.raises(ValueError, match="scoring mode 'lenient'"):
        is_correct(NUMBER, "4", "4", mode="lenient")
    with pytest.raises(ValueError, match="answer_type 'capital' is not one of number, option, word, exact"):
        AnswerSpec("capital")
