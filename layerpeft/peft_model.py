"""Applying a layer plan to a transformers model, and adapter save/load.

``apply_plan`` freezes the base model, builds one ``AdapterModule`` per (layer, kind) of the
plan, registers them under ``model.layerpeft`` (so ``.to()``, ``.parameters()`` and
``.train()`` reach them) and hooks them into their layers. The model stays a plain
transformers model: ``model(...)`` and ``model.generate(...)`` work as before, with one
extra forward argument, ``prompt_mask``, that tells prompt-dependent modules which tokens
are the prompt in a teacher-forced sequence.

A plan may also train base weights (``full`` fine-tuning unfreezes its layers): those are
``AdapterSet.base_params``, counted with the adapter's parameters and saved beside them
under ``base.<name>``, so one adapter file always holds everything a run trained.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from layerpeft.methods import MODULE_KINDS, AdapterModule, ForwardContext
from layerpeft.methods.prefix import Prefix, install_prefix_attention
from layerpeft.models.roles import Dims, decoder_layers, family_of
from layerpeft.errors import UserError
from layerpeft.plan import LayerPlan, PlanError

ADAPTER_FILE = "adapter.safetensors"
ATTR = "layerpeft"
BASE = "base."


class AdapterSet(nn.Module):
    """All PEFT modules of one model, keyed ``layers.<index>.<kind>``."""

    def __init__(self, plan: LayerPlan, dims: Dims, family, device=None):
        super().__init__()
        self.plan = plan
        self.ctx = ForwardContext()
        self.layers = nn.ModuleDict()
        # Tensors tied across the layers of one kind (Tied-LoRA): built once, held here.
        self.shared = nn.ModuleDict()
        with torch.device(device or "cpu"):
            for k in plan.kinds:
                make = getattr(MODULE_KINDS[k], "make_shared", None)
                tied = make(dims, plan.options[k]) if make else None
                if tied is not None:
                    self.shared[k] = tied
            for i, kinds in enumerate(plan.layers):
                if kinds:
                    self.layers[str(i)] = nn.ModuleDict({k: self._build(k, i, dims, family) for k in kinds})
        self._handles: list = []
        # Base-model parameters the plan trains (full fine-tuning), by their model name.
        self.base_params: dict[str, nn.Parameter] = {}

    def _build(self, kind: str, index: int, dims: Dims, family) -> AdapterModule:
        extra = {"shared": self.shared[kind]} if kind in self.shared else {}
        return MODULE_KINDS[kind](index, dims, family, self.ctx, **extra, **self.plan.options[kind])

    def adapter_modules(self) -> Iterator[AdapterModule]:
        for layer in self.layers.values():
            yield from layer.values()

    def select_sequences(self, index: torch.Tensor) -> None:
        """Keep the batch rows ``index`` of all per-sequence state (a decoder dropped the others)."""
        for module in self.adapter_modules():
            module.select_sequences(index)

    def sequence_state(self) -> list:
        """Every module's per-sequence decoding state (None for modules that keep none)."""
        return [module.sequence_state() for module in self.adapter_modules()]

    def set_sequence_state(self, states: list) -> None:
        """Inverse of ``sequence_state`` (a decoder that moved rows edits it in between)."""
        for module, state in zip(self.adapter_modules(), states):
            module.set_sequence_state(state)

    def layer_params(self, index: int) -> int:
        key = str(index)
        if key not in self.layers:
            return 0
        base = sum(p.numel() for m in self.layers[key].values() for p in getattr(m, "base", ()))
        return base + sum(p.numel() for p in self.layers[key].parameters())

    def trainable(self) -> dict[str, torch.Tensor]:
        """Every tensor the plan trains: the modules' own (state-dict names) and the base
        parameters it unfroze (``base.<name>``)."""
        return {**dict(self.named_parameters()), **self._prefixed_base()}

    def _prefixed_base(self) -> dict[str, nn.Parameter]:
        return {f"{BASE}{n}": p for n, p in self.base_params.items()}

    def num_params(self) -> int:
        return sum(p.numel() for p in self.trainable().values())

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """What ``save_adapter`` writes: the modules' state (incl. frozen seeded buffers) and
        the trained base parameters."""
        state = {**self.state_dict(), **self._prefixed_base()}
        return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}

    @torch.no_grad()
    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of ``adapter_state``; strict about both parts."""
        base = {k[len(BASE):]: v for k, v in state.items() if k.startswith(BASE)}
        if set(base) != set(self.base_params):
            missing, extra = set(self.base_params) - set(base), set(base) - set(self.base_params)
            raise ValueError(f"adapter's base parameters do not match the plan: missing {sorted(missing)[:3]}, "
                             f"unexpected {sorted(extra)[:3]}")
        self.load_state_dict({k: v for k, v in state.items() if not k.startswith(BASE)}, strict=True)
        for name, value in base.items():
            self.base_params[name].copy_(value)

    def set_response_scale(self, scale: float, layers: list[int] | None = None) -> None:
        """Scale every module's contribution (or only those in ``layers``); 0 = base model."""
        for m in self.adapter_modules():
            if layers is None or m.layer_idx in layers:
                m.response_scale = float(scale)

    def shared_params(self) -> int:
        return sum(p.numel() for p in self.shared.parameters())

    def merge_refusals(self) -> list[str]:
        """Why the plan cannot be folded into the base weights, one line per module kind."""
        reasons = {}
        for m in self.adapter_modules():
            reason = m.merge_refusal()
            if reason is not None:
                reasons.setdefault(m.kind, f"{m.kind} (layers {m.layer_idx}…): {reason}")
        return list(reasons.values())

    def merge(self) -> None:
        """Fold every module into the base weights (inference without hook overhead)."""
        refused = self.merge_refusals()
        if refused:
            raise ValueError("the plan cannot be merged into the base weights: " + "; ".join(refused))
        for m in self.adapter_modules():
            m.merge()

    def unmerge(self) -> None:
        for m in self.adapter_modules():
            if hasattr(m, "unmerge"):
                m.unmerge()

    def fold(self) -> None:
        """Fold training-time reparametrisations (prefix MLP) into plain parameters."""
        for m in self.adapter_modules():
            if isinstance(m, Prefix):
                m.fold()
        if "prefix" in self.plan.options:
            self.plan.options["prefix"]["reparam"] = False

    def detach_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def get_adapters(model: nn.Module) -> AdapterSet:
    adapters = getattr(model, ATTR, None)
    if not isinstance(adapters, AdapterSet):
        raise ValueError("model has no layer plan applied (use layerpeft.apply_plan)")
    return adapters


def apply_plan(model: nn.Module, plan: LayerPlan, seed: int | None = None) -> AdapterSet:
    """Freeze ``model``, place the plan's modules and return them.

    ``seed`` seeds torch's global generator before the modules draw their random
    initialisation, so a run's ``seed`` fixes its starting adapter (and the dropout masks drawn
    after it), not only its data order; ``None`` leaves the generator as it is.
    """
    if isinstance(getattr(model, ATTR, None), AdapterSet):
        raise ValueError("model already has a layer plan applied")
    family = family_of(model.config)
    dims = Dims.from_config(model.config)
    if plan.num_layers != dims.num_layers:
        raise PlanError(f"plan is for {plan.num_layers} layers, the model has {dims.num_layers}")
    for p in model.parameters():
        p.requires_grad_(False)
    device = next(model.parameters()).device
    if seed is not None:
        torch.manual_seed(seed)
    adapters = AdapterSet(plan, dims, family, device=device)
    adapters.train(model.training)
    model.add_module(ATTR, adapters)

    layers = decoder_layers(model, family)
    for m in adapters.adapter_modules():
        adapters._handles.extend(m.attach(layers[m.layer_idx]))
    if any(getattr(MODULE_KINDS[k], "extends_attention", False) for k in plan.kinds):
        install_prefix_attention(model)
    adapters._handles.append(
        model.register_forward_pre_hook(_context_hook(adapters.ctx), with_kwargs=True)
    )
    # Model-level parts of shared modules (the soft prompt's pass, unfreezing embeddings);
    # their hooks run after the context hook, so they see this forward's context.
    for shared in adapters.shared.values():
        if hasattr(shared, "attach_model"):
            adapters._handles.extend(shared.attach_model(model, adapters.ctx))
    for name, p in model.named_parameters():
        if p.requires_grad and not name.startswith(f"{ATTR}."):
            if p.dtype != torch.float32:  # trained weights stay fp32 (autocast computes in bf16)
                p.data = p.data.float()
            adapters.base_params[name] = p
    return adapters


def _context_hook(ctx: ForwardContext):
    """Model-level pre-hook: record the prompt mask, the packed sequences (if any) and whether
    this is a cached step."""

    def hook(_mod, args, kwargs):
        prompt_mask = kwargs.pop("prompt_mask", None)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        ctx.decoding = cache is not None and cache.get_seq_length() > 0
        if not ctx.decoding:
            attention_mask = kwargs.get("attention_mask")
            if prompt_mask is None:
                prompt_mask = attention_mask
            ctx.prompt_mask = None if prompt_mask is None else prompt_mask.bool()
            ctx.segments = packed_segments(kwargs.get("position_ids")) if attention_mask is None else None
        return args, kwargs

    return hook


def packed_segments(position_ids: torch.Tensor | None) -> torch.Tensor | None:
    """Sequence index of each token of a padding-free row (positions restart at each sequence,
    the rule transformers' masks use for packed inputs), or None when nothing is packed."""
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[1] < 2:
        return None
    restarts = position_ids[:, 1:] != position_ids[:, :-1] + 1
    if not restarts.any():
        return None
    return torch.cat([torch.zeros_like(position_ids[:, :1]), restarts.long().cumsum(dim=1)], dim=1)


def save_adapter(model: nn.Module, directory: str | Path, extra_meta: dict | None = None) -> Path:
    """Write the adapter weights and plan as one safetensors file (no pickles)."""
    adapters = get_adapters(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = adapters.adapter_state()
    meta = {"format": "pt", "layerpeft_plan": adapters.plan.to_json()}
    for k, v in (extra_meta or {}).items():
        meta[k] = json.dumps(v)
    path = directory / ADAPTER_FILE
    save_file(tensors, str(path), metadata=meta)
    return path


class AdapterFileError(UserError):
    """An adapter file that is unreadable or does not match its own plan or the model."""


def read_adapter_plan(directory: str | Path) -> LayerPlan:
    """The plan stored in an adapter file's metadata, validated like a config (known kinds,
    segments inside the model, options each kind accepts)."""
    path = Path(directory) / ADAPTER_FILE
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises several types for garbled files
        raise AdapterFileError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        plan = LayerPlan.from_dict(json.loads(meta["layerpeft_plan"]))
        check_stored_plan(plan)
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # PlanError is a ValueError
        raise AdapterFileError(f"{path}: its metadata holds no valid layerpeft plan ({e})") from None
    return plan


def check_stored_plan(plan: LayerPlan) -> None:
    """A plan read from a file: every kind known, segments inside the model, options valid."""
    if not isinstance(plan.num_layers, int) or plan.num_layers <= 0:
        raise PlanError(f"num_layers={plan.num_layers!r}")
    for seg in plan.segments:
        if seg.module != "none" and seg.module not in MODULE_KINDS:
            raise PlanError(f"unknown module {seg.module!r}")
        if not (isinstance(seg.start, int) and isinstance(seg.end, int) and 0 <= seg.start < seg.end <= plan.num_layers):
            raise PlanError(f"segment {seg.module} {seg.start}:{seg.end} is not inside {plan.num_layers} layers")
    if set(plan.options) != set(plan.kinds):
        raise PlanError(f"options for {sorted(plan.options)} but modules {plan.kinds}")
    for kind, opts in plan.options.items():
        cls = MODULE_KINDS[kind]
        unknown = sorted(set(opts) - set(cls.defaults))
        if unknown:
            raise PlanError(f"unknown option(s) {', '.join(unknown)} for module {kind!r}")
        cls.check_options({**cls.defaults, **opts})


def _check_shapes(model: nn.Module, plan: LayerPlan, path: Path, shapes: dict[str, list[int]]) -> None:
    """The file's tensors against the shapes its plan gives on this model, built on the meta
    device (no memory): a plan whose options were edited (a huge ``r``) is refused before any
    module is allocated."""
    config = model.config
    with torch.device("meta"):
        expected = AdapterSet(plan, Dims.from_config(config), family_of(config), device="meta").state_dict()
    for name, t in expected.items():
        if name not in shapes:
            raise AdapterFileError(f"{path}: tensor {name} of its plan is missing")
        if list(t.shape) != list(shapes[name]):
            raise AdapterFileError(f"{path}: tensor {name} has shape {list(shapes[name])}, its plan gives "
                                   f"{list(t.shape)} on this model")
    for name, shape in shapes.items():
        if name.startswith(BASE):
            try:
                want = list(model.get_parameter(name[len(BASE):]).shape)
            except AttributeError:
                raise AdapterFileError(f"{path}: {name} is not a parameter of this model") from None
            if want != list(shape):
                raise AdapterFileError(f"{path}: {name} has shape {list(shape)}, the model's is {want}")


def check_adapter(model: nn.Module, directory: str | Path) -> LayerPlan:
    """The adapter file's plan, validated against itself and ``model`` (which may be on the meta
    device): every tensor its plan needs is there with the shape the plan gives."""
    path = Path(directory) / ADAPTER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no adapter at {path}")
    plan = read_adapter_plan(directory)
    layers = Dims.from_config(model.config).num_layers
    if plan.num_layers != layers:
        raise AdapterFileError(f"{path}: its plan is for {plan.num_layers} layers, the model has {layers}")
    with safe_open(str(path), framework="pt") as f:
        _check_shapes(model, plan, path, {k: f.get_slice(k).get_shape() for k in f.keys()})
    return plan


def load_adapter(model: nn.Module, directory: str | Path) -> AdapterSet:
    """Apply the saved plan to ``model`` and load the saved weights into it (strictly)."""
    plan = check_adapter(model, directory)
    path = Path(directory) / ADAPTER_FILE
    with safe_open(str(path), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    adapters = apply_plan(model, plan)
    try:
        adapters.load_adapter_state(state)
    except (RuntimeError, ValueError) as e:
        raise AdapterFileError(f"{path}: {e}") from None
    return adapters
