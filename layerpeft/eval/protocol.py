"""The two evaluation protocols: how a question becomes a prompt, how it is decoded, and which
part of the decoded text is scored.

``parity`` is LLM-Adapters' ``evaluate.py`` (math) and ``commonsense_evaluate.py`` end to end:
their own prompt string (an indented variant of the training template, with the instruction
only: the scripts never pass the input), 4 beams, the dataset's new-token budget (256 math,
32 commonsense), no stop strings (a beam ends at EOS or at the budget), the *whole* decoded
sequence split on "### Response:" and the part after the first one (up to a later one) scored
with their extraction rules (``answers.extract(..., "parity")``). The math script decodes with
special tokens, the commonsense one without. Its one departure: prompts are decoded in
left-padded batches rather than one at a time.

``strict`` (the default) is this project's: the training template, greedy decoding that stops
at EOS or at the template's next section marker, the response cut at the first marker, and
AQuA read from "answer is (X)". The README lists the differences one per line; they matter
because cutting at any marker rescues a model that rambles on into an invented next question.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from layerpeft.data.prompts import STOP_MARKERS, prompt_text
from layerpeft.eval.answers import MODES, AnswerSpec

RESPONSE = "### Response:"


def evaluate_py_prompt(instruction: str) -> str:
    """The prompt of LLM-Adapters' evaluate.py, byte for byte: its f-string keeps the source's
    16-space indentation and a space after "request."."""
    pad = " " * 16
    return ("Below is an instruction that describes a task. Write a response that appropriately "
            f"completes the request. \n\n{pad}### Instruction:\n{pad}{instruction}\n\n{pad}{RESPONSE}\n{pad}")


def cut_at_markers(text: str) -> str:
    """Strict: the text before the first template section marker, stripped."""
    for marker in STOP_MARKERS:
        i = text.find(marker)
        if i >= 0:
            text = text[:i]
    return text.strip()


def parity_cut(full_text: str) -> str:
    """Parity: ``full_text.split("### Response:")[1].strip()``, the reference scripts' rule on
    the decoded prompt + continuation."""
    parts = full_text.split(RESPONSE)
    return parts[1].strip() if len(parts) > 1 else ""


@dataclass(frozen=True)
class Protocol:
    name: str
    num_beams: int
    stop_at_markers: bool
    _prompt: Callable[[dict[str, Any]], str]

    def prompt(self, example: dict[str, Any]) -> str:
        return self._prompt(example)

    def response(self, tokenizer, answer: AnswerSpec, prompt_ids: list[int], new_ids: list[int]) -> str:
        """The scored text of one answer (``new_ids``: the continuation, EOS included if emitted)."""
        if self.name == "strict":
            return cut_at_markers(tokenizer.decode(new_ids, skip_special_tokens=True))
        # evaluate.py (math) decodes with special tokens, commonsense_evaluate.py (words) without
        skip = answer.type == "word"
        return parity_cut(tokenizer.decode(list(prompt_ids) + list(new_ids), skip_special_tokens=skip))


PROTOCOLS = {
    "strict": Protocol("strict", 1, True, lambda ex: prompt_text(ex["instruction"], ex.get("input", ""))),
    "parity": Protocol("parity", 4, False, lambda ex: evaluate_py_prompt(ex["instruction"])),
}


def resolve(eval_cfg, dataset_max_new_tokens: int | None) -> tuple[Protocol, int, int]:
    """(protocol, num_beams, max_new_tokens) of an ``eval`` config; ``ValueError`` naming the key
    when parity is asked to decode otherwise than the reference scripts."""
    mode = eval_cfg.mode
    if mode not in MODES:
        raise ValueError(f"eval.mode={mode!r} is not one of {', '.join(MODES)}")
    protocol = PROTOCOLS[mode]
    beams = protocol.num_beams if eval_cfg.num_beams is None else int(eval_cfg.num_beams)
    new_tokens = int(eval_cfg.max_new_tokens if eval_cfg.max_new_tokens is not None else dataset_max_new_tokens)
    if mode == "parity":
        if beams != protocol.num_beams:
            raise ValueError(f"eval.num_beams={beams}: eval.mode=parity decodes with LLM-Adapters' 4 beams "
                             "(leave eval.num_beams unset)")
        if dataset_max_new_tokens is not None and new_tokens != int(dataset_max_new_tokens):
            raise ValueError(f"eval.max_new_tokens={new_tokens}: eval.mode=parity decodes the reference scripts' "
                             f"{dataset_max_new_tokens} new tokens for this dataset (leave it unset)")
    return protocol, beams, new_tokens
