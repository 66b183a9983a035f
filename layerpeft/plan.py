"""Layer plans: which PEFT modules sit in which transformer layer.

A plan is built from a method config (its *slots*: one module for uniform methods,
bottom/[middle]/top for hybrids) and an optional layer ratio, validated against a layer
count only — no weights — so ``layerpeft plan`` and every error about a bad ratio, an
unknown module or a bad option happen before anything loads.

Ratio rule (docs/design.md): parts that add up to the model's depth are layer counts;
otherwise they are proportions, floored, with left-over layers going to the largest
fractional remainders (ties to the lower segment). ``24:8`` on 30 layers gives 23:7.
A ratio may also name modules explicitly (``lora_ffn:6,none:24,prefix:2``), which replaces
the method's slots, or name a layout of ``conf/layouts.yaml`` (``layers25pct``). A slot may
hold several kinds in the same layers: ``prefix+parallel``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

NONE = "none"
SLOT_KEYS = ("bottom", "middle", "top")


class PlanError(ValueError):
    """A method/ratio/option combination that cannot be placed on the model."""


@dataclass(frozen=True)
class Segment:
    module: str
    start: int
    end: int  # exclusive

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass
class LayerPlan:
    method: str
    num_layers: int
    segments: list[Segment]
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def layers(self) -> list[list[str]]:
        """Per layer index, the module kinds placed there (empty for untouched layers)."""
        out: list[list[str]] = [[] for _ in range(self.num_layers)]
        for seg in self.segments:
            if seg.module != NONE:
                for i in range(seg.start, seg.end):
                    out[i].append(seg.module)
        return out

    @property
    def kinds(self) -> list[str]:
        return sorted({s.module for s in self.segments if s.module != NONE})

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "num_layers": self.num_layers,
            "segments": [
                {"module": s.module, "start": s.start, "end": s.end} for s in self.segments
            ],
            "options": self.options,
            "layers": self.layers,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LayerPlan":
        return cls(
            method=d["method"],
            num_layers=d["num_layers"],
            segments=[Segment(s["module"], s["start"], s["end"]) for s in d["segments"]],
            options=d["options"],
        )


def _plain(x: Any) -> Any:
    if isinstance(x, (DictConfig, ListConfig)):
        return OmegaConf.to_container(x, resolve=True)
    return x


def ratio_text(spec: Any) -> str:
    """A ratio spec as the user would write it (``5:27``, ``lora_ffn:6,none:24,prefix:2``)."""
    spec = _plain(spec)
    if isinstance(spec, dict) and "parts" in spec:
        spec = spec["parts"]
    if isinstance(spec, (list, tuple)):
        sep = "," if any(isinstance(p, str) and ":" in p for p in spec) else ":"
        return sep.join(str(p) for p in spec)
    return str(spec)


def named_layouts() -> dict[str, list]:
    """``conf/layouts.yaml``: layouts the papers name (``layer_ratio=layers25pct``)."""
    import yaml

    from layerpeft.config import CONF_DIR

    return yaml.safe_load((Path(CONF_DIR) / "layouts.yaml").read_text())


def parse_parts(spec: Any) -> list[tuple[str | None, int]]:
    """Parse a ratio spec into ``(module or None, size)`` parts.

    Accepts ``"5:27"``, ``"3:4:1"``, ``"lora_ffn:6,none:24,prefix:2"``, a list of those
    items, a layout name of ``conf/layouts.yaml``, or a mapping with a ``parts`` list (the
    form run configs stored before ratios became plain values).
    """
    spec = _plain(spec)
    if isinstance(spec, str) and spec.strip() in (layouts := named_layouts()):
        spec = layouts[spec.strip()]
    if isinstance(spec, dict):
        if "parts" not in spec:
            raise PlanError(f"layer_ratio {spec!r} has no 'parts' list")
        spec = spec["parts"]
    if isinstance(spec, str):
        text = spec.strip()
        items: list[Any] = (
            [p.strip() for p in text.split(",")] if "," in text else
            # "a:b:c" is sizes; "kind:n" alone is one explicit segment.
            ([text] if any(c.isalpha() for c in text) else text.split(":"))
        )
    elif isinstance(spec, (list, tuple)):
        items = list(spec)
    else:
        raise PlanError(f"layer_ratio {spec!r} is neither a ratio string nor a list of parts")
    if not items:
        raise PlanError("layer_ratio is empty")

    parts: list[tuple[str | None, int]] = []
    for item in items:
        module: str | None = None
        size: Any = item
        if isinstance(item, str) and ":" in item:
            module, size = (p.strip() for p in item.split(":", 1))
        try:
            n = int(size) if not isinstance(size, bool) else None
            if n is None or str(n) != str(size).strip():
                raise ValueError
        except (TypeError, ValueError):
            raise PlanError(
                f"layer_ratio part {item!r} in '{ratio_text(spec)}' is not a positive integer"
            ) from None
        if n <= 0:
            raise PlanError(f"layer_ratio part {item!r} in '{ratio_text(spec)}' is not a positive integer")
        parts.append((module, n))
    explicit = [m is not None for m, _ in parts]
    if any(explicit) and not all(explicit):
        raise PlanError(
            f"layer_ratio {spec!r} mixes named parts (module:size) with bare sizes; use one form"
        )
    return parts


def scale_parts(sizes: list[int], num_layers: int) -> list[int]:
    """Turn ratio parts into layer counts for a model of ``num_layers`` layers."""
    total = sum(sizes)
    if total == num_layers:
        return list(sizes)
    exact = [s * num_layers / total for s in sizes]
    counts = [math.floor(x) for x in exact]
    left = num_layers - sum(counts)
    # Largest fractional remainder first; on ties the lower (earlier) segment wins.
    order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[:left]:
        counts[i] += 1
    return counts


def method_slots(method_cfg: Any) -> list[str]:
    """The module kind of each slot of a method, bottom to top."""
    m = _plain(method_cfg)
    if m.get("module") is not None:
        if any(m.get(k) is not None for k in SLOT_KEYS):
            raise PlanError(f"method {m.get('name')!r} sets both 'module' and bottom/middle/top")
        return [m["module"]]
    slots = [m[k] for k in SLOT_KEYS if m.get(k) is not None]
    if not slots:
        raise PlanError(f"method {m.get('name')!r} names no module (set 'module' or bottom/top)")
    return slots


def default_ratio(method_cfg: Any, family: str | None) -> Any:
    m = _plain(method_cfg)
    by_family = m.get("ratio_by_family") or {}
    if family in by_family:
        return by_family[family]
    return m.get("ratio")


def module_options(method_cfg: Any, kind: str) -> dict[str, Any]:
    """Options for one module kind: registry defaults ← method's ``options.<kind>`` ← ``gate``."""
    from layerpeft.methods import MODULE_KINDS

    m = _plain(method_cfg)
    cls = MODULE_KINDS[kind]
    opts = dict(cls.defaults)
    given = dict((m.get("options") or {}).get(kind) or {})
    unknown = sorted(set(given) - set(opts))
    if unknown:
        raise PlanError(
            f"unknown option(s) {', '.join(unknown)} for module {kind!r} in method "
            f"{m.get('name')!r}; valid: {', '.join(sorted(opts))}"
        )
    opts.update(given)
    if "gate" in opts and m.get("gate") is not None and "gate" not in given:
        opts["gate"] = bool(m["gate"])
    cls.check_options(opts)
    return opts


def _check_kinds(slot: str, where: str) -> None:
    """A slot names one module kind, ``none``, or several joined by ``+`` (``prefix+parallel``)."""
    from layerpeft.methods import MODULE_KINDS

    for kind in slot.split("+"):
        if kind not in MODULE_KINDS and slot != NONE:
            raise PlanError(
                f"{where} names unknown module {kind!r}; known: {', '.join(sorted(MODULE_KINDS))}, none"
            )


def build_plan(
    method_cfg: Any, num_layers: int, family: str | None = None, ratio: Any = None
) -> LayerPlan:
    """Validate a method (+ optional ratio) and lay it out over ``num_layers`` layers."""
    m = _plain(method_cfg)
    name = m.get("name", "?")
    if num_layers <= 0:
        raise PlanError(f"model has {num_layers} layers")
    slots = method_slots(m)
    for slot in slots:
        _check_kinds(slot, f"method {name!r}")

    spec = ratio if ratio is not None else default_ratio(m, family)
    if spec is None:
        if len(slots) != 1:
            raise PlanError(f"method {name!r} has {len(slots)} slots and needs a layer_ratio")
        parts: list[tuple[str | None, int]] = [(slots[0], num_layers)]
    else:
        parts = parse_parts(spec)
        if parts[0][0] is None:
            if len(parts) != len(slots):
                raise PlanError(
                    f"layer_ratio {ratio_text(spec)!r} has {len(parts)} segments but method "
                    f"{name!r} takes {len(slots)} ({':'.join(slots)})"
                )
            parts = [(slot, n) for slot, (_, n) in zip(slots, parts)]
        for slot, _ in parts:
            _check_kinds(slot, f"layer_ratio {ratio_text(spec)!r}")

    counts = scale_parts([n for _, n in parts], num_layers)
    segments: list[Segment] = []
    start = 0
    for (kind, _), n in zip(parts, counts):
        if n == 0 and kind != NONE:
            raise PlanError(
                f"layer_ratio {ratio_text(spec)!r} leaves the {kind!r} segment empty on a "
                f"{num_layers}-layer model; give explicit layer counts that add up to {num_layers}"
            )
        segments.extend(Segment(k, start, start + n) for k in kind.split("+"))
        start += n

    kinds = sorted({s.module for s in segments if s.module != NONE})
    options = {k: module_options(m, k) for k in kinds}
    return LayerPlan(method=name, num_layers=num_layers, segments=segments, options=options)
