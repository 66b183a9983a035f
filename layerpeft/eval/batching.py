"""Continuous-batching greedy decoding: a fixed number of rows decode at once, and when an answer
finishes, the next waiting prompt takes its row.

Batched ``generate`` keeps a finished answer in its batch until the batch's last answer ends, and
dropping finished rows (the decoder this replaces) cut the decoded row-steps 2.1–2.7× but the
time only 1.08× on a CPU, because a decoding step with few rows costs nearly as much as a full
one. Refilling the freed rows turns the saving into time.

The cache is preallocated (rows × heads × capacity × head_dim per layer) and written in place:
transformers' ``DynamicCache`` concatenates, i.e. copies the whole cache at every step. All rows
share one write column; each row is left-padded (attention-mask zeros) and has its own position
counter, so padding never shifts a position. A waiting prompt joins by being prefilled on its
own (with the other prompts joining at that step, in a fresh cache) and copied into the freed
row, right-aligned at the current column; the adapters' per-sequence state (prefix gates, PARA's
vectors), which that prefill computed for the new rows only, is written into the same rows.
Once no prompt waits, finished rows are dropped; columns that are padding in every row are
dropped when the buffer fills. Each row therefore decodes exactly as it would alone (tested
against one-prompt-at-a-time greedy decoding for every method).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from layerpeft.peft_model import ATTR


class _SlotLayer(DynamicLayer):
    """One layer's keys and values in a preallocated buffer; ``keys``/``values`` are views of the
    filled columns, so appending a decoded token copies one column, not the cache."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int):
        super().__init__()
        rows, heads, length, dim = keys.shape
        self.buf_k = keys.new_zeros(rows, heads, capacity, dim)
        self.buf_v = values.new_zeros(rows, heads, capacity, dim)
        self.buf_k[:, :, :length], self.buf_v[:, :, :length] = keys, values
        self.device, self.is_initialized = keys.device, True
        self.length = length
        self._views()

    def _views(self) -> None:
        self.keys, self.values = self.buf_k[:, :, : self.length], self.buf_v[:, :, : self.length]

    def update(self, key_states, value_states, *args, **kwargs):
        end = self.length + key_states.shape[2]
        self.buf_k[:, :, self.length : end], self.buf_v[:, :, self.length : end] = key_states, value_states
        self.length = end
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def place(self, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """New rows' prefill (right-aligned: their last token in the last filled column)."""
        n = keys.shape[2]
        self.buf_k[slots, :, self.length - n : self.length] = keys
        self.buf_v[slots, :, self.length - n : self.length] = values

    def shift(self, by: int, capacity: int) -> None:
        """Move the filled columns ``by`` to the right (< 0: drop ``-by`` leading columns) into a
        buffer of ``capacity`` columns."""
        rows, heads, _, dim = self.buf_k.shape
        keep = slice(max(0, -by), self.length)
        new_k, new_v = self.buf_k.new_zeros(rows, heads, capacity, dim), self.buf_v.new_zeros(rows, heads, capacity, dim)
        start = max(0, by)
        new_k[:, :, start : start + keep.stop - keep.start] = self.buf_k[:, :, keep]
        new_v[:, :, start : start + keep.stop - keep.start] = self.buf_v[:, :, keep]
        self.buf_k, self.buf_v, self.length = new_k, new_v, self.length + by
        self._views()

    def select(self, index: torch.Tensor) -> None:
        self.buf_k, self.buf_v = self.buf_k[index], self.buf_v[index]
        self._views()


class _Rows:
    """The rows decoding now: cache, attention mask (rows × capacity), next positions, last tokens
    and which prompt each row answers."""

    def __init__(self, prefill: "_Prefill", capacity: int):
        self.cache = DynamicCache()
        self.cache.layers = [_SlotLayer(layer.keys, layer.values, capacity) for layer in prefill.cache.layers]
        self.capacity = capacity
        self.mask = prefill.mask.new_zeros(prefill.mask.shape[0], capacity)
        self.mask[:, : prefill.mask.shape[1]] = prefill.mask
        self.positions, self.last, self.owners = prefill.positions, prefill.last, list(prefill.owners)

    @property
    def length(self) -> int:
        return self.cache.layers[0].length

    def _shift(self, by: int, capacity: int) -> None:
        keep = self.mask[:, max(0, -by) : self.length]
        for layer in self.cache.layers:
            layer.shift(by, capacity)
        mask = self.mask.new_zeros(self.mask.shape[0], capacity)
        mask[:, max(0, by) : max(0, by) + keep.shape[1]] = keep
        self.mask, self.capacity = mask, capacity

    def make_room(self, columns: int) -> None:
        """Ensure ``columns`` more columns fit: drop leading all-padding columns, else grow."""
        if self.length + columns <= self.capacity:
            return
        empty = int((self.mask[:, : self.length].cumsum(dim=1) == 0).all(dim=0).sum())
        capacity = self.capacity if self.length - empty + columns <= self.capacity else \
            max(self.length - empty + columns, self.capacity * 3 // 2)
        self._shift(-empty, capacity)

    def place(self, slots: list[int], joining: "_Prefill", adapters) -> None:
        """The prefilled ``joining`` prompts take the free ``slots``."""
        n = joining.mask.shape[1]
        if n > self.length:  # a prompt longer than the filled columns: pad every row on the left
            self._shift(n - self.length, max(self.capacity, self.capacity + n - self.length))
        index = torch.tensor(slots, device=self.mask.device)
        for layer, new in zip(self.cache.layers, joining.cache.layers):
            layer.place(index, new.keys, new.values)
        self.mask[index] = 0
        self.mask[index, self.length - n : self.length] = joining.mask
        self.positions[index], self.last[index] = joining.positions, joining.last
        for slot, owner in zip(slots, joining.owners):
            self.owners[slot] = owner

    def select(self, keep: list[int], adapters) -> None:
        index = torch.tensor(keep, device=self.mask.device)
        for layer in self.cache.layers:
            layer.select(index)
        if adapters is not None:
            adapters.select_sequences(index)
        self.mask, self.positions, self.last = self.mask[index], self.positions[index], self.last[index]
        self.owners = [self.owners[j] for j in keep]


class _Prefill:
    """Prompts run left-padded in a fresh cache; ``last`` is each one's first greedy token."""

    def __init__(self, model, prompts: list[list[int]], owners: list[int], pad_id: int, device, cache_arg: str):
        width = max(map(len, prompts))
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
        self.mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        positions = (self.mask.cumsum(-1) - 1).clamp_min(0)
        self.cache = DynamicCache(config=model.config)
        logits = model(input_ids=ids, attention_mask=self.mask, position_ids=positions, use_cache=True,
                       logits_to_keep=1, **{cache_arg: self.cache}).logits
        self.positions, self.last, self.owners = positions[:, -1] + 1, logits[:, -1].argmax(dim=-1), owners


def _scatter_state(old: Any, new: Any, slots: torch.Tensor) -> Any:
    """``old`` per-sequence state with the rows ``slots`` replaced by ``new``'s (tensors, or dicts of them)."""
    if old is None or new is None:
        return old
    if isinstance(old, dict):
        return {k: _scatter_state(old[k], new[k], slots) for k in old}
    return old.index_copy(0, slots, new)


@torch.no_grad()
def continuous_greedy(model, prompts: list[list[int]], rows: int, max_new_tokens: int, eos_token_id, pad_id: int,
                      stopped: Callable[[list[int]], bool] | None = None,
                      on_done: Callable[[int, list[int]], object] | None = None) -> list[list[int]]:
    """Greedy continuations (token ids, ending with EOS when it was emitted) of ``prompts`` (token
    id lists), at most ``rows`` decoding at once, the waiting prompts taken in order. A row ends
    at EOS, after ``max_new_tokens``, or when ``stopped(tokens)`` is true; its place goes to the
    next waiting prompt. ``on_done(i, tokens)`` is called as answer ``i`` is complete."""
    eos = set([] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else eos_token_id)
    adapters = getattr(model, ATTR, None)
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    device = next(model.parameters()).device
    out: list[list[int]] = [[] for _ in prompts]
    waiting = list(range(len(prompts)))
    batch: _Rows | None = None

    def prefill(owners: list[int]) -> _Prefill:
        joining = _Prefill(model, [prompts[i] for i in owners], owners, pad_id, device, cache_arg)
        for i, token in zip(owners, joining.last.tolist()):
            out[i].append(token)
        return joining

    def finished(i: int) -> bool:
        toks = out[i]
        return toks[-1] in eos or len(toks) >= max_new_tokens or (stopped is not None and stopped(toks))

    while waiting or batch is not None:
        if batch is None:
            first = prefill(waiting[:rows])
            waiting = waiting[rows:]
            batch = _Rows(first, capacity=first.mask.shape[1] + max_new_tokens)
        else:
            free = [j for j, owner in enumerate(batch.owners) if owner is None]
            if free and waiting:
                slots, joining_owners = free[: len(waiting)], waiting[: len(free)]
                waiting = waiting[len(slots):]
                earlier = adapters.sequence_state() if adapters is not None else None
                joining = prefill(joining_owners)
                if adapters is not None:
                    index = torch.tensor(slots, device=device)
                    adapters.set_sequence_state([_scatter_state(o, n, index)
                                                 for o, n in zip(earlier, adapters.sequence_state())])
                batch.place(slots, joining, adapters)
            else:
                batch.make_room(1)
                batch.mask[:, batch.length] = 1
                logits = model(input_ids=batch.last[:, None], attention_mask=batch.mask[:, : batch.length + 1],
                               position_ids=batch.positions[:, None], use_cache=True, logits_to_keep=1,
                               **{cache_arg: batch.cache}).logits
                batch.positions = batch.positions + 1
                batch.last = logits[:, -1].argmax(dim=-1)
                for i, token in zip(batch.owners, batch.last.tolist()):
                    out[i].append(token)
        done = [j for j, i in enumerate(batch.owners) if i is not None and finished(i)]
        for j in done:
            if on_done is not None:
                on_done(batch.owners[j], out[batch.owners[j]])
            batch.owners[j] = None
        if not waiting and any(owner is None for owner in batch.owners):
            keep = [j for j, owner in enumerate(batch.owners) if owner is not None]
            if not keep:
                batch = None
            else:
                batch.select(keep, adapters)
    return out
