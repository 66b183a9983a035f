"""Zero-shot evaluation: batched, left-padded generation with the KV cache, then scoring.

LLM-Adapters generates one prompt at a time with 4 beams and no cache, which is very slow;
here prompts are sorted by length and generated in batches, greedy by default
(``eval.num_beams`` for parity runs). Decoding stops at EOS or when the model starts a new
template section ("### Instruction:" …), and the response is cut there.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from layerpeft.data.prompts import STOP_MARKERS, prompt_text
from layerpeft.eval.answers import extract, is_correct


def cut_response(text: str) -> str:
    for marker in STOP_MARKERS:
        i = text.find(marker)
        if i >= 0:
            text = text[:i]
    return text.strip()


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int, num_beams: int = 1,
             device: torch.device | None = None, stats: dict[str, float] | None = None,
             desc: str | None = None) -> list[str]:
    """Responses to ``prompts`` (in order), batched by length with left padding.

    ``stats``, when given, accumulates ``new_tokens`` (generated, up to EOS/stop) and ``seconds``.
    """
    device = device or next(model.parameters()).device
    tokenizer.padding_side = "left"
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=desc, disable=desc is None, dynamic_ncols=True):
        idx = order[start : start + batch_size]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(device)
        t0 = time.perf_counter()
        gen = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=False,
            use_cache=True,
            stop_strings=list(STOP_MARKERS),
            tokenizer=tokenizer,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new = gen[:, enc.input_ids.shape[1] :]
        if stats is not None:
            stats["seconds"] = stats.get("seconds", 0.0) + time.perf_counter() - t0
            stats["new_tokens"] = stats.get("new_tokens", 0) + int((new != tokenizer.pad_token_id).sum())
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
        for i, text in zip(idx, texts):
            out[i] = cut_response(text)
    return out


def evaluate(model, tokenizer, evals: dict[str, list[dict[str, Any]]], eval_cfg, predictions_path: Path | None = None,
             missing: dict[str, str] | None = None) -> dict[str, Any]:
    """Score every evaluation set; writes one JSON line per example to ``predictions_path``."""
    model.eval()
    results: dict[str, Any] = {}
    lines: list[dict[str, Any]] = []
    stats: dict[str, float] = {}
    for name, items in evals.items():
        if eval_cfg.limit:
            items = items[: int(eval_cfg.limit)]
        prompts = [prompt_text(ex["instruction"], ex.get("input", "")) for ex in items]
        responses = generate(model, tokenizer, prompts, int(eval_cfg.batch_size), int(eval_cfg.max_new_tokens),
                             int(eval_cfg.num_beams), stats=stats, desc=f"eval {name}")
        correct = 0
        for i, (ex, resp) in enumerate(zip(items, responses)):
            ok = is_correct(name, resp, ex["answer"], mode=eval_cfg.mode)
            correct += ok
            pred = extract(name, resp, eval_cfg.mode)
            lines.append({"dataset": name, "index": i, "instruction": ex["instruction"], "response": resp,
                          "gold": ex["answer"], "pred": pred, "correct": ok})
        n = len(items)
        results[name] = {"n": n, "correct": correct, "accuracy": 100.0 * correct / n if n else 0.0}
    if predictions_path is not None:
        with open(predictions_path, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(json.dumps(line) + "\n")
    accs = [r["accuracy"] for r in results.values()]
    return {
        "datasets": results,
        "average": sum(accs) / len(accs) if accs else None,
        "missing": dict(missing or {}),
        "scoring": eval_cfg.mode,
        "num_beams": int(eval_cfg.num_beams),
        "inference_tokens_per_s": stats["new_tokens"] / stats["seconds"] if stats.get("seconds") else None,
    }
