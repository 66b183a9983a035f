"""Zero-shot evaluation: batched generation with the KV cache, then scoring.

LLM-Adapters generates one prompt at a time with 4 beams and no cache, which is very slow.
How a question is prompted, decoded and cut is the evaluation protocol (``eval.mode``,
``eval/protocol.py``): ``strict`` decodes greedily with continuous batching (``eval/batching.py``:
``eval.batch_size`` rows at once, a finished answer's row goes to the next prompt) and stops at
EOS or the template's next section; ``parity`` runs LLM-Adapters' 4-beam search through
``generate`` in left-padded batches of prompts sorted by length, without stop strings.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from layerpeft.data.prompts import STOP_MARKERS
from layerpeft.eval.answers import AnswerSpec, extract, is_correct
from layerpeft.eval.batching import continuous_greedy
from layerpeft.eval.protocol import resolve
from layerpeft.provenance import device_name


log = logging.getLogger(__name__)

#: Decoding stops the step a marker is complete, so the marker lies in the last tokens: decoding
#: only those keeps the check from growing with the answer (a marker is a handful of tokens).
MARKER_WINDOW = 16


def stopped_by_marker(tokenizer):
    """A stopping rule for greedy decoding: the continuation contains a template marker."""

    def stopped(tokens: list[int]) -> bool:
        text = tokenizer.decode(tokens[-MARKER_WINDOW:], skip_special_tokens=True)
        return any(marker in text for marker in STOP_MARKERS)

    return stopped


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int, num_beams: int = 1,
             stop_at_markers: bool = True, stats: dict[str, float] | None = None, desc: str | None = None,
             on_done: Callable[[int, list[int], list[int]], object] | None = None) -> list[tuple[list[int], list[int]]]:
    """(prompt token ids, continuation token ids) for each of ``prompts``, decoded in the order
    given (callers put prompts of similar length together). The continuation ends with EOS when
    the model emitted it; greedy decoding also stops at a template marker when
    ``stop_at_markers``, beam search never does. ``on_done(i, prompt_ids, new_ids)`` is called
    as each answer is complete.

    ``stats``, when given, accumulates ``new_tokens`` (generated, up to EOS/stop) and ``seconds``.
    """
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    new: list[list[int]] = [[] for _ in prompts]
    done = on_done or (lambda *_: None)
    t0 = time.perf_counter()
    with tqdm(total=len(prompts), desc=desc, disable=desc is None, dynamic_ncols=True) as bar:
        if num_beams == 1:
            def finished(i: int, tokens: list[int]) -> None:
                new[i] = tokens
                bar.update(1)
                done(i, ids[i], tokens)

            continuous_greedy(model, ids, batch_size, max_new_tokens, eos, tokenizer.pad_token_id,
                              stopped_by_marker(tokenizer) if stop_at_markers else None, on_done=finished)
        else:
            tokenizer.padding_side = "left"
            for start in range(0, len(prompts), batch_size):
                idx = range(start, min(start + batch_size, len(prompts)))
                enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(device)
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
                                     use_cache=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
                for i, row in zip(idx, gen[:, enc.input_ids.shape[1]:].tolist()):
                    new[i] = _until_eos(row, eos)
                    bar.update(1)
                    done(i, ids[i], new[i])
    if stats is not None:
        stats["seconds"] = stats.get("seconds", 0.0) + time.perf_counter() - t0
        stats["new_tokens"] = stats.get("new_tokens", 0) + sum(len(row) - (row[-1:] == [eos]) for row in new)
    return list(zip(ids, new))


def _until_eos(row: list[int], eos: int | None) -> list[int]:
    """A ``generate`` row up to and including its first EOS (what follows is padding)."""
    return row[: row.index(eos) + 1] if eos is not None and eos in row else row


def finished_sets(predictions_path: Path | None, decode: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Prediction lines of the sets an earlier, interrupted evaluation already finished.

    A set's lines are reused only when they were decoded the same way (``decode``: protocol,
    ``num_beams``, ``max_new_tokens``); ``evaluate`` also checks that they cover the same examples."""
    if predictions_path is None or not predictions_path.is_file():
        return {}
    done: dict[str, list[dict[str, Any]]] = {}
    with open(predictions_path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if all(row.get(k, "strict" if k == "mode" else None) == v for k, v in decode.items()):
                done.setdefault(row["dataset"], []).append(row)
    return done


def evaluate(model, tokenizer, evals: dict[str, list[dict[str, Any]]], answers: dict[str, AnswerSpec], eval_cfg,
             predictions_path: Path | None = None, missing: dict[str, str] | None = None,
             dataset_max_new_tokens: int | None = None) -> dict[str, Any]:
    """Score every evaluation set (``answers``: how each set's answers are read); writes one JSON
    line per example to ``predictions_path``.

    The sets still to answer are decoded as one stream, set after set (prompts sorted by length
    within a set): rows freed by one set's last answers already take the next set's questions, so
    no set ends in a half-empty batch. The file is rewritten whenever a set is complete, so an
    evaluation stopped part-way keeps its finished sets, and evaluating into the same file again
    (``train.resume=true``) decodes only the sets still missing."""
    model.eval()
    protocol, num_beams, max_new_tokens = resolve(eval_cfg, dataset_max_new_tokens)
    decode = {"mode": protocol.name, "num_beams": num_beams, "max_new_tokens": max_new_tokens}
    earlier = finished_sets(predictions_path, decode)
    sets = {name: items[: int(eval_cfg.limit)] if eval_cfg.limit else items for name, items in evals.items()}
    responses: dict[str, list[str | None]] = {}
    for name, items in sets.items():
        old = earlier.get(name, [])
        reusable = [r["instruction"] for r in old] == [ex["instruction"] for ex in items]
        responses[name] = [r["response"] for r in old] if reusable else [None] * len(items)
    results: dict[str, Any] = {}
    lines: dict[str, list[dict[str, Any]]] = {}

    def finish(name: str) -> None:
        """Score a complete set and rewrite the predictions file with every complete set."""
        items, correct, lines[name] = sets[name], 0, []
        for i, (ex, resp) in enumerate(zip(items, responses[name])):
            ok = is_correct(answers[name], resp, ex["answer"], mode=protocol.name)
            correct += ok
            lines[name].append({"dataset": name, "index": i, "instruction": ex["instruction"], "response": resp,
                                "gold": ex["answer"], "pred": extract(answers[name], resp, protocol.name), "correct": ok,
                                **decode})
        results[name] = {"n": len(items), "correct": correct, "accuracy": 100.0 * correct / len(items) if items else 0.0}
        log.info(f"{name}: {correct} of {len(items)} right, {results[name]['accuracy']:.2f} %")
        if predictions_path is not None:
            tmp = predictions_path.with_name(predictions_path.name + ".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                for done_set in (n for n in sets if n in lines):
                    for line in lines[done_set]:
                        f.write(json.dumps(line) + "\n")
            tmp.replace(predictions_path)

    queue = [(name, i) for name, items in sets.items() if None in responses[name]
             for i in sorted(range(len(items)), key=lambda i: len(items[i]["instruction"]))]
    left = {name: len(sets[name]) for name in sets if None in responses[name]}
    for name in sets:
        if name not in left:
            finish(name)

    def answered(k: int, prompt_ids: list[int], new_ids: list[int]) -> None:
        name, i = queue[k]
        responses[name][i] = protocol.response(tokenizer, answers[name], prompt_ids, new_ids)
        left[name] -= 1
        if not left[name]:
            finish(name)

    stats: dict[str, float] = {}
    if queue:
        log.info(f"evaluating {len(queue)} questions ({', '.join(f'{n} {len(sets[n])}' for n in left)}): "
                 f"{protocol.name} protocol, {num_beams} beam(s), up to {max_new_tokens} new tokens, "
                 f"{eval_cfg.batch_size} rows at once")
        generate(model, tokenizer, [protocol.prompt(sets[name][i]) for name, i in queue], int(eval_cfg.batch_size),
                 max_new_tokens, num_beams, protocol.stop_at_markers, stats=stats,
                 desc=f"eval {', '.join(left)}", on_done=answered)
    results = {name: results[name] for name in sets}
    accs = [r["accuracy"] for r in results.values()]
    base = next(model.parameters())  # the embedding: the frozen base's device and dtype
    return {
        "eval_device": device_name(base.device),
        "eval_dtype": str(base.dtype).removeprefix("torch."),
        "datasets": results,
        "average": sum(accs) / len(accs) if accs else None,
        "missing": dict(missing or {}),
        "scoring": protocol.name,
        "num_beams": num_beams,
        "max_new_tokens": max_new_tokens,
        "inference_tokens_per_s": stats["new_tokens"] / stats["seconds"] if stats.get("seconds") else None,
    }
