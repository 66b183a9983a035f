"""The causal-LM loss without materialising the logits.

transformers computes logits for every position (B × T × vocab), upcasts them to fp32 and runs
a cross-entropy whose backward allocates and fills another tensor of the same size. With a
49k vocabulary that is most of a small model's training step on a CPU (measured on SmolLM2:
the upcast, log-softmax and its backward took about a third of the step, the matrix products a
fifth). Here the decoder's last hidden state is taken from its output, and the loss of the
positions that have a label is computed in row chunks: each chunk's logits exist only inside
the chunk. When the loss will be backpropagated, each chunk's gradient (softmax minus the
one-hot, times the head) is computed right there, while its logits exist, and kept for the
backward pass, which only scales it: recomputing the logits in backward instead would cost a
third matrix product with the head, about a tenth of a SmolLM2 training step. The result is the
same mean cross-entropy over the same tokens, with the logits in the same precision (the
autocast dtype, upcast to fp32 for the softmax).
"""

from __future__ import annotations

import torch

from layerpeft.train.packed_attention import attend_by_sequence

#: Rows of logits computed at once: 128 × 49k × 4 bytes = 25 MB, which stays in the CPU's cache
#: (on SmolLM2 a step took 6.0–6.2 s against 6.6–8.2 s with 1,024-row chunks, ad-hoc timing).
CHUNK = 128


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, targets, compute_dtype, grads: tuple[bool, bool, bool]):
        """``grads``: whether h, weight and bias will need gradients (decided outside, where grad
        mode is visible); those gradients, of the mean loss, are computed here."""
        n = h.shape[0]
        lse = torch.empty(n, dtype=torch.float32, device=h.device)
        picked = torch.empty_like(lse)
        w = weight.to(compute_dtype)
        b = bias.to(compute_dtype) if bias is not None else None
        grad_h = torch.empty_like(h) if grads[0] else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if grads[1] else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if grads[2] else None
        for start in range(0, n, CHUNK):
            rows = slice(start, start + CHUNK)
            hc = h[rows].to(compute_dtype)
            logits = torch.nn.functional.linear(hc, w, b).float()
            lse[rows] = torch.logsumexp(logits, dim=-1)
            picked[rows] = logits.gather(1, targets[rows, None]).squeeze(1)
            if not any(grads):
                continue
            probs = logits.sub_(lse[rows, None]).exp_()  # the chunk's softmax, in place of its logits
            probs[torch.arange(probs.shape[0], device=probs.device), targets[rows]] -= 1.0
            g = (probs / n).to(compute_dtype)  # d mean loss / d logits of this chunk
            if grad_h is not None:
                grad_h[rows] = (g @ w).to(h.dtype)
            if grad_w is not None:
                grad_w += (g.t() @ hc).float()
            if grad_b is not None:
                grad_b += g.float().sum(0)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        return (lse - picked).mean()

    @staticmethod
    def backward(ctx, grad):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        w_dtype, b_dtype = ctx.dtypes
        return ((grad_h.float() * grad).to(grad_h.dtype) if grad_h is not None else None,
                (grad_w * grad).to(w_dtype) if grad_w is not None else None,
                (grad_b * grad).to(b_dtype) if grad_b is not None else None, None, None, None)


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
    h = hidden[valid]
    grads = (torch.is_grad_enabled() and h.requires_grad, torch.is_grad_enabled() and head.weight.requires_grad,
             torch.is_grad_enabled() and head.bias is not None and head.bias.requires_grad)
    with torch.autocast(hidden.device.type, enabled=False):
        return _ChunkedLinearCrossEntropy.apply(h, head.weight, head.bias, targets[valid], dtype or hidden.dtype, grads)
