"""The Alpaca prompt template of LLM-Adapters, and tokenising examples with it.

The prompt boundary (``prompt_len``) travels with every tokenised example so that modules
that read the prompt (HLPT's prefix gate, PARA) see the same tokens in training as at
generation time.
"""

from __future__ import annotations

from typing import Any

HEAD = (
    "Below is an instruction that describes a task{extra}. "
    "Write a response that appropriately completes the request.\n\n"
)
#: Generation stops here: an untrained model tends to invent the next section.
STOP_MARKERS = ("### Instruction:", "### Input:", "### Response:")


def prompt_text(instruction: str, input: str = "") -> str:
    if input:
        return (
            HEAD.format(extra=", paired with an input that provides further context")
            + f"### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
        )
    return HEAD.format(extra="") + f"### Instruction:\n{instruction}\n\n### Response:\n"


def tokenize_example(tokenizer, ex: dict[str, Any], cutoff: int, train_on_inputs: bool) -> dict[str, Any]:
    """input_ids/labels for prompt + output + EOS, truncated to ``cutoff`` tokens.

    Prompt and output are tokenised separately and concatenated, so the prompt's tokens are
    exactly those generation will see (LLM-Adapters tokenises the joined text, where a BPE
    merge across the boundary can make training and generation prompts differ).
    """
    prompt_ids = tokenizer(prompt_text(ex["instruction"], ex.get("input", "")))["input_ids"]
    output_ids = tokenizer(ex["output"], add_special_tokens=False)["input_ids"]
    ids = (prompt_ids + output_ids + [tokenizer.eos_token_id])[:cutoff]
    prompt_len = min(len(prompt_ids), len(ids))
    labels = list(ids) if train_on_inputs else [-100] * prompt_len + ids[prompt_len:]
    return {"input_ids": ids, "labels": labels, "prompt_len": prompt_len}


def batchify(batch: list[dict[str, Any]], pad_id: int, packed: bool):
    """A micro-batch of tokenised examples as model inputs: packed into one row (``pack``) or
    right-padded (``collate``)."""
    return pack(batch) if packed else collate(batch, pad_id)


def pack(batch: list[dict[str, Any]]):
    """The examples back to back in one row, without padding: positions restart at every
    example, which is how transformers recognises packed sequences and masks attention block by
    block (each sequence sees only itself); the first token of each later example gets no label,
    so no token is predicted across a boundary. The loss is the padded batch's: the same
    (position, next token) pairs, averaged over the same labelled tokens."""
    import torch

    ids, labels, positions, prompt = [], [], [], []
    for b in batch:
        n = len(b["input_ids"])
        ids += b["input_ids"]
        labels += [-100] + list(b["labels"][1:])
        positions += range(n)
        prompt += [True] * b["prompt_len"] + [False] * (n - b["prompt_len"])
    return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([positions]), "prompt_mask": torch.tensor([prompt])}


def collate(batch: list[dict[str, Any]], pad_id: int):
    """Right-pad a list of tokenised examples; adds ``attention_mask`` and ``prompt_mask``."""
    import torch

    n = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), -100, dtype=torch.long)
    attn = torch.zeros((len(batch), n), dtype=torch.long)
    prompt = torch.zeros((len(batch), n), dtype=torch.bool)
    for i, b in enumerate(batch):
        k = len(b["input_ids"])
        ids[i, :k] = torch.tensor(b["input_ids"])
        labels[i, :k] = torch.tensor(b["labels"])
        attn[i, :k] = 1
        prompt[i, : b["prompt_len"]] = True
    return {"input_ids": ids, "labels": labels, "attention_mask": attn, "prompt_mask": prompt}
