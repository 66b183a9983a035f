"""PARA, prompt-aware representation adjustment (seed 002).

Before each planned layer a vector generator reads the layer's input hidden state at the
*last prompt token*, ``l = GELU(h W_down) W_up + b_up`` (r = 12, W_down ~ N(0, 0.02), W_up = 0,
b_up = 1: the identity at the start), and splits ``l`` into ``l_q`` (size of Q), ``l_v`` (size
of V: kv_heads × head_dim on GQA models) and ``l_u`` (FFN width): ``Q' = l_q ⊙ Q``,
``V' = l_v ⊙ V``, ``U' = l_u ⊙ U`` (the FFN up projection).

The paper reads the last prompt token, which a token *inside* the prompt has not seen yet: with
the loss on the prompt (``train_on_inputs``) that would leak the future. So the generator is
causal: a prompt token's vectors come from its own hidden state, a token after the prompt uses
the last prompt token's (the paper's vectors). The response and generation are therefore
exactly the paper's: the prompt's vectors are computed at the prefill (or from the prompt part
of a teacher-forced sequence, ``ForwardContext.prompt_mask``) and reused for every decoded token
and every beam (beams of one prompt share them, so beam reordering leaves them valid). That is
why PARA decodes faster than unmerged LoRA: per decoded token it adds three element-wise
products and no matrix products.

With response scale s the applied vector is ``1 + s (l − 1)``; s = 0 is the base model.
"""

from __future__ import annotations

import torch
from torch import nn

from layerpeft.methods.base import AdapterModule, check_positive_int


class PARA(AdapterModule):
    kind = "para"
    defaults = {"r": 12, "init_std": 0.02}

    @classmethod
    def check_options(cls, opts):
        check_positive_int(cls.kind, opts, "r")

    @classmethod
    def param_note(cls, dims, options, layers: int) -> str:
        """The paper's count leaves out the up-projection bias; say which one we print."""
        out = dims.q_out + dims.kv_out + dims.ffn
        without = layers * (dims.hidden + out) * options["r"]
        return (f"para: trainable_params counts the up-projection bias b_up ({layers * out:,}); "
                f"without it {without:,} (the paper's figure)")

    def __init__(self, layer_idx, dims, family, ctx, **options):
        super().__init__(layer_idx, dims, family, ctx, **options)
        r = options["r"]
        self.sizes = {"q": dims.q_out, "v": dims.kv_out, "up": dims.ffn}
        out = sum(self.sizes.values())
        self.down = nn.Parameter(torch.randn(dims.hidden, r) * float(options["init_std"]))
        self.up = nn.Parameter(torch.zeros(r, out))
        self.up_bias = nn.Parameter(torch.ones(out))
        self._vectors: dict[str, torch.Tensor] | None = None  # (B, size): the prompt's, for decoding
        self._current: dict[str, torch.Tensor] | None = None  # (B, T or 1, size): this forward's

    def merge_refusal(self) -> str | None:
        return "PARA's vectors depend on each prompt"

    def _generate(self, _mod, args, kwargs):
        h = kwargs.get("hidden_states", args[0] if args else None)
        if self.ctx.decoding:
            if self._vectors is None or self._vectors["q"].shape[0] != h.shape[0]:
                raise RuntimeError(f"PARA layer {self.layer_idx}: a cached decoding step without a matching prefill")
            self._current = {role: vec.unsqueeze(1) for role, vec in self._vectors.items()}
            return None
        batch, length = h.shape[:2]
        vec = torch.nn.functional.gelu(h.to(self.down.dtype) @ self.down) @ self.up + self.up_bias  # (B, T, out)
        src = self.ctx.prompt_source_index(batch, length, h.device)
        vec = vec.gather(1, src.unsqueeze(-1).expand_as(vec))
        last = vec[torch.arange(batch, device=h.device), self.ctx.last_prompt_index(batch, length, h.device)]
        sizes = list(self.sizes.values())
        self._current = dict(zip(self.sizes, vec.split(sizes, dim=-1)))
        self._vectors = dict(zip(self.sizes, last.split(sizes, dim=-1)))
        return None

    def select_sequences(self, index):
        if self._vectors is not None:
            self._vectors = {role: vec[index] for role, vec in self._vectors.items()}

    def sequence_state(self):
        return self._vectors

    def set_sequence_state(self, state):
        self._vectors = state

    def attach(self, layer):
        handles = [layer.register_forward_pre_hook(self._generate, with_kwargs=True)]
        for role in self.sizes:
            def hook(_mod, _args, out, role=role):
                s = self.response_scale
                if s == 0.0:
                    return out
                vec = self._current[role]
                if s != 1.0:
                    vec = 1.0 + s * (vec - 1.0)
                return out * vec.to(out.dtype)  # one product per token

            handles.append(self.target(layer, role).register_forward_hook(hook))
        return handles
