"""The causal-LM loss without materialising the logits.

transformers computes logits for every position (B × T × vocab), upcasts them to fp32 and runs
a cross-entropy whose backward allocates and fills another tensor of the same size. With a
49k vocabulary that is most of a small model's training step on a CPU (measured on SmolLM2:
the upcast, log-softmax and its backward took about a third of the step, the matrix products a
fifth). Here the decoder's last hidden state is taken from its output, and the loss of the
positions that have a label is computed in row chunks: each chunk's logits exist only inside
the chunk (forward: log-sum-exp and the label's logit; backward: recomputed, softmax minus the
one-hot). The result is the same mean cross-entropy over the same tokens, with the logits in
the same precision (the autocast dtype, upcast to fp32 for the softmax).
"""

from __future__ import annotations

import torch

from layerpeft.train.packed_attention import attend_by_sequence

#: Rows of logits computed at once: 128 × 49k × 4 bytes = 25 MB, which stays in the CPU's cache
#: (on SmolLM2 a step took 6.0–6.2 s against 6.6–8.2 s with 1,024-row chunks, ad-hoc timing).
CHUNK = 128


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, targets, compute_dtype):
        lse = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        picked = torch.empty_like(lse)
        w = weight.to(compute_dtype)
        b = bias.to(compute_dtype) if bias is not None else None
        for start in range(0, h.shape[0], CHUNK):
            rows = slice(start, start + CHUNK)
            logits = torch.nn.functional.linear(h[rows].to(compute_dtype), w, b).float()
            lse[rows] = torch.logsumexp(logits, dim=-1)
            picked[rows] = logits.gather(1, targets[rows, None]).squeeze(1)
        ctx.save_for_backward(h, weight, bias, targets, lse)
        ctx.compute_dtype = compute_dtype
        return (lse - picked).mean()

    @staticmethod
    def backward(ctx, grad):
        h, weight, bias, targets, lse = ctx.saved_tensors
        cd = ctx.compute_dtype
        w = weight.to(cd)
        b = bias.to(cd) if bias is not None else None
        scale = grad / h.shape[0]
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and ctx.needs_input_grad[2] else None
        for start in range(0, h.shape[0], CHUNK):
            rows = slice(start, start + CHUNK)
            hc = h[rows].to(cd)
            probs = torch.exp(torch.nn.functional.linear(hc, w, b).float() - lse[rows, None])
            probs[torch.arange(probs.shape[0], device=probs.device), targets[rows]] -= 1.0
            g = (probs * scale).to(cd)  # d loss / d logits of this chunk
            if grad_h is not None:
                grad_h[rows] = (g @ w).to(h.dtype)
            if grad_w is not None:
                grad_w += (g.t() @ hc).float()
            if grad_b is not None:
                grad_b += g.float().sum(0)
        return (grad_h, grad_w.to(weight.dtype) if grad_w is not None else None,
                grad_b.to(bias.dtype) if grad_b is not None else None, None, None)


def causal_lm_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled positions of ``batch`` (labels −100 are
    ignored, as in transformers), computed from the decoder's output in chunks. Runs the model's
    own forward (so every adapter hook and the prompt context apply) with ``logits_to_keep=1``."""
    captured = {}
    decoder = model.get_decoder()
    handle = decoder.register_forward_hook(lambda _m, _a, out: captured.__setitem__("h", out[0]))
    try:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with attend_by_sequence(model, inputs.get("position_ids") if "attention_mask" not in inputs else None):
            model(**inputs, logits_to_keep=1, use_cache=False)
    finally:
        handle.remove()
    hidden = captured["h"][:, :-1]
    targets = batch["labels"][:, 1:]
    valid = targets != -100
    head = model.get_output_embeddings()
    dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) else None
    with torch.autocast(hidden.device.type, enabled=False):
        return _ChunkedLinearCrossEntropy.apply(hidden[valid], head.weight, head.bias, targets[valid],
                                                dtype or hidden.dtype)
