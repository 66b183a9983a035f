"""Full fine-tuning as a plan: the plan's layers (and optionally everything outside the layers:
embeddings, final norm, LM head) train their own weights.

It is the survey's reference point for memory and throughput, so it runs through the same
pipeline as every PEFT method. It breaks two parts of the module contract on purpose, and
says so: it changes base weights (they appear in ``AdapterSet.base_params`` and are saved under
``base.``), and it has no response scale — there is no "module output" to suppress, so
``set_response_scale`` to anything but 1 raises. A plan over a subset of layers gives partial
fine-tuning (e.g. only the top layers) with the same code.
"""

from __future__ import annotations

from torch import nn

from layerpeft.methods.base import AdapterModule


class _Unfreeze:
    """Handle that freezes the parameters again when the plan is detached."""

    def __init__(self, params: list[nn.Parameter]):
        self.params = params
        for p in params:
            p.requires_grad_(True)

    def remove(self) -> None:
        for p in self.params:
            p.requires_grad_(False)


class _NonLayerWeights(nn.Module):
    """Model-level part: unfreezes the weights outside the decoder layers."""

    def attach_model(self, model: nn.Module, _ctx) -> list:
        from layerpeft.models.roles import decoder_layers, family_of

        in_layers = {id(p) for layer in decoder_layers(model, family_of(model.config)) for p in layer.parameters()}
        rest = [p for name, p in model.named_parameters() if id(p) not in in_layers and not name.startswith("layerpeft.")]
        return [_Unfreeze(rest)]


class FullLayer(AdapterModule):
    kind = "full"
    defaults = {"non_layer": True}
    zero_init = True  # nothing has changed before the first step
    layer_local = False  # IST's sparse selection is for adapter modules, not base weights

    @classmethod
    def check_options(cls, opts):
        from layerpeft.plan import PlanError

        if not isinstance(opts["non_layer"], bool):
            raise PlanError(f"option full.non_layer={opts['non_layer']!r} must be true or false")

    @classmethod
    def make_shared(cls, dims, options: dict) -> nn.Module | None:
        return _NonLayerWeights() if options["non_layer"] else None

    def __init__(self, layer_idx, dims, family, ctx, shared=None, **options):
        super().__init__(layer_idx, dims, family, ctx, **options)  # ``shared`` only unfreezes

    @property
    def response_scale(self) -> float:
        return 1.0

    @response_scale.setter
    def response_scale(self, value: float) -> None:
        if value != 1.0:
            raise ValueError("full fine-tuning changes the base weights in place; it has no response scale")

    def merge_refusal(self) -> str | None:
        return None  # it trained the weights themselves

    def merge(self) -> None:
        pass

    def unmerge(self) -> None:
        pass

    def attach(self, layer):
        params = list(layer.parameters())
        object.__setattr__(self, "base", params)  # the layer's own weights, not registered twice
        return [_Unfreeze(params)]
