"""lm-evaluation-harness: score any run — gated hybrids and PARA included — with the benchmark
tool most papers report with.

``LayerpeftLM`` is an lm-eval model registered as ``layerpeft`` (``--model_args run=RUN_DIR``).
It answers the three request types on the run's model as ``load_run`` builds it, telling the
prompt-dependent modules where the prompt is: for a log-likelihood request the prompt is the
request's context, so HLPT's prefix gates and PARA's vectors are the context's, as in training
and generation; a generation request's context is prefilled like any prompt and decoded with
the evaluation's continuous-batching greedy decoder.

lm-eval 0.4 finds models only in its own registry, so the command ``layerpeft lm-eval …``
(``cli``) imports this module and hands its arguments to lm-eval's command line unchanged:
``layerpeft lm-eval --model layerpeft --model_args run=RUN_DIR --tasks TASKS``. From Python,
``lm_eval.simple_evaluate(model=LayerpeftLM(run=RUN_DIR), tasks=[…])`` does the same.
Install with ``pip install -e '.[lmeval]'``.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from layerpeft.eval.generate import generate
from layerpeft.rundir import load_run


@register_model("layerpeft")
class LayerpeftLM(LM):
    def __init__(self, run: str, batch_size: int | str = 16, max_length: int = 2048, max_gen_toks: int = 256,
                 device: str | None = None, **_unused):
        super().__init__()
        if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
            device = "cuda" if torch.cuda.is_available() else "cpu"  # lm-eval's default asks for cuda
        self.model, self.tokenizer = load_run(run, device=device)
        self.batch_size = int(batch_size) if str(batch_size) != "auto" else 16
        self.max_length, self.max_gen_toks = int(max_length), int(max_gen_toks)
        self._device = torch.device(device)

    # --- encoding -----------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation token ids, as lm-eval's own models split them: trailing
        spaces of the context move to the continuation; an empty context is the EOS token."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        if not context:
            return [self.tokenizer.eos_token_id], self._encode(continuation)
        whole, ctx = self._encode(context + continuation), self._encode(context)
        return ctx, whole[len(ctx):]

    # --- scoring ------------------------------------------------------------------------
    @torch.no_grad()
    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """Log-probability of each continuation after its context, and whether greedy decoding
        would produce it; the context is the prompt (``prompt_mask``)."""
        results: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            rows = []
            for i in idx:
                ctx, cont = pairs[i]
                whole = (ctx + cont)[-(self.max_length + 1):]
                n_ctx = len(whole) - len(cont)
                rows.append((whole[:-1], n_ctx, cont))
            width = max(len(r[0]) for r in rows)
            ids = torch.zeros(len(rows), width, dtype=torch.long)
            mask = torch.zeros(len(rows), width, dtype=torch.long)
            prompt = torch.zeros(len(rows), width, dtype=torch.bool)
            for j, (inp, n_ctx, _) in enumerate(rows):
                ids[j, : len(inp)] = torch.tensor(inp)
                mask[j, : len(inp)] = 1
                prompt[j, :n_ctx] = True
            logprobs = F.log_softmax(self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                                prompt_mask=prompt.to(self.device)).logits.float(), dim=-1)
            for j, (i, (inp, n_ctx, cont)) in enumerate(zip(idx, rows)):
                positions = torch.arange(n_ctx - 1, n_ctx - 1 + len(cont))
                target = torch.tensor(cont)
                row = logprobs[j, positions]
                results[i] = (float(row.gather(1, target[:, None]).sum()), bool((row.argmax(-1) == target).all()))
        return results

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        return self._score([self._pair(*r.args) for r in requests])

    def loglikelihood_rolling(self, requests) -> list[float]:
        out = []
        for r in requests:
            tokens = self._encode(r.args[0])
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=tokens, prefix_token=self.tokenizer.eos_token_id, max_seq_len=self.max_length,
                context_len=1)]
            out.append(sum(lp for lp, _ in self._score(windows)))
        return out

    # --- generation ---------------------------------------------------------------------
    def generate_until(self, requests) -> list[str]:
        out = [""] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            kwargs = dict(r.args[1])
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            key = (tuple(until), int(kwargs.pop("max_gen_toks", self.max_gen_toks)))
            groups.setdefault(key, []).append(i)
        for (until, new_tokens), idx in groups.items():
            prompts = [requests[i].args[0] for i in idx]
            decoded = generate(self.model, self.tokenizer, prompts, self.batch_size, new_tokens, stop_at_markers=False)
            for i, (_, new) in zip(idx, decoded):
                text = self.tokenizer.decode(new, skip_special_tokens=True)
                for stop in until:
                    text = text.split(stop)[0]
                out[i] = text
        return out


def cli(argv: list[str]) -> int:
    """``layerpeft lm-eval ARGS``: lm-eval's command line with the ``layerpeft`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *argv]
    cli_evaluate()
    return 0
