"""A task = training examples + named evaluation sets, from ``conf/dataset/*.yaml``.

``train`` is a source or a list of sources (``data/sources.py``: a local JSON/JSONL/CSV/Parquet
file or a hub dataset), optionally sampled down to ``train_sample`` examples; ``evals`` names
each evaluation set's source and its ``answer_type`` (``data/answer_types.py``), which every set must
declare — a set is never silently scored as a number. ``columns`` maps the examples' fields onto
the sources' columns (per set too). With ``holdout: true`` every test set loses the questions
whose instruction also occurs in the training data (the HLPT paper's protocol: SVAMP 200, AQuA
51, AddSub 79, MultiArith 109, SingleEq 102, GSM8K 264). Sources marked ``optional`` that are
absent are reported in ``Task.missing`` (and metrics.json) instead of failing the run.
``source: synthetic`` generates the examples in code.

``data.val_size`` examples of the training data form a validation set (the loss curves of the
HLPT paper's Fig. 4): drawn from what ``data.train_size`` (or a ``train_sample`` mixture) left
out, so the training set is the same with or without validation; carved out of the pool when
the whole pool trains (LLM-Adapters' ``val_set_size``). Synthetic tasks generate theirs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from layerpeft.data.files import DataError, data_dir
from layerpeft.data.sources import check_source, load_source, resolve_path
from layerpeft.data.synthetic import synthetic_math
from layerpeft.data.answer_types import ANSWER_TYPES, AnswerSpec


@dataclass
class Task:
    name: str
    train: list[dict[str, Any]]
    evals: dict[str, list[dict[str, Any]]]
    answers: dict[str, AnswerSpec] = field(default_factory=dict)  # eval set → how its answers are read
    missing: dict[str, str] = field(default_factory=dict)  # eval set → why it is absent
    val: list[dict[str, Any]] = field(default_factory=list)


def _plain(cfg: Any) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def _train_sources(d: dict) -> list[dict]:
    train = d.get("train")
    return [] if train is None else list(train) if isinstance(train, list) else [train]


def check_dataset(dataset_cfg: Any) -> None:
    """The dataset config itself (before any file is read): every evaluation set has a known
    ``answer_type`` and one source, the training data has one."""
    d = _plain(dataset_cfg)
    name = d.get("name")
    evals = d.get("evals") or {}
    if not evals:
        older = " (this config was written by an older layerpeft: pass dataset=NAME)" if "eval_sets" in d else ""
        raise DataError(f"dataset {name!r} has no evaluation sets (+dataset.evals.NAME.path=FILE "
                        f"+dataset.evals.NAME.answer_type=number|option|word|exact){older}")
    for set_name, e in evals.items():
        where = f"dataset.evals.{set_name}"
        if not isinstance(e, dict):
            raise DataError(f"{where}: expected {{path: FILE, answer_type: …}}, got {e!r}")
        if e.get("answer_type") not in ANSWER_TYPES:
            raise DataError(f"{where}.answer_type={e.get('answer_type')!r}: every evaluation set declares how its "
                            f"answers are read, one of {', '.join(ANSWER_TYPES)}")
        words = e.get("words")
        if words is not None and (not isinstance(words, list) or not all(isinstance(w, str) and w for w in words)):
            raise DataError(f"{where}.words={words!r}: must be a list of non-empty strings")
        if d.get("source") != "synthetic":
            check_source(e, where)
    if d.get("source") != "synthetic":
        sources = _train_sources(d)
        if not sources:
            raise DataError(f"dataset {name!r} has no training data (dataset.train.path=FILE or dataset.train.hub=ID)")
        for i, src in enumerate(sources):
            check_source(src, "dataset.train" + (f"[{i}]" if len(sources) > 1 else ""))


def subsample(examples: list, size: int | None, seed: int, what: str = "data.train_size") -> list:
    """``size`` examples drawn without replacement with ``seed`` (all when None); a size beyond
    the pool is an error, not a silent "all"."""
    if size is None or size == len(examples):
        return list(examples)
    if size <= 0:
        raise DataError(f"{what}={size} must be positive")
    if size > len(examples):
        raise DataError(f"{what}={size} exceeds the {len(examples)} examples available")
    return random.Random(seed).sample(examples, size)


def load_task(dataset_cfg: Any, data_cfg: Any) -> Task:
    d, data = _plain(dataset_cfg), _plain(data_cfg)
    check_dataset(d)
    val_size = int(data.get("val_size") or 0)
    if val_size < 0:
        raise DataError(f"data.val_size={val_size} must be >= 0")
    if d.get("source") == "synthetic":
        s = d["synthetic"]
        # Validation problems are generated beyond the training and test ones.
        n, n_eval = s["n_train"], s["n_eval"]
        every = synthetic_math(n + n_eval + val_size, s["seed"])
        (set_name, spec), = d["evals"].items()
        train = subsample(every[:n], data.get("train_size"), int(data.get("seed", 42)))
        return Task(name=d["name"], train=train, evals={set_name: every[n : n + n_eval]},
                    answers={set_name: AnswerSpec(spec["answer_type"])}, val=every[n + n_eval :])
    root = data_dir(data.get("dir"))
    columns = d.get("columns") or {}
    missing: dict[str, str] = {}
    train = []
    for i, src in enumerate(_train_sources(d)):
        if src.get("optional") and src.get("path") and not resolve_path(src["path"], root).is_file():
            missing[f"train:{src['path']}"] = f"{resolve_path(src['path'], root)} not found"
            continue
        train += load_source(src, {**columns, **(src.get("columns") or {})}, root, False, f"dataset.train[{i}]")
    spare: list = []  # training examples outside the pool: validation comes from them first
    if d.get("train_sample"):  # a fixed mixture drawn from the sources (commonsense_15k-like)
        every = train
        train = subsample(every, int(d["train_sample"]), int(d.get("train_sample_seed", 42)),
                          f"dataset {d['name']!r}: train_sample")
        spare = _outside(every, train)
    seen = {ex["instruction"].strip() for ex in train}
    evals, answers = {}, {}
    for set_name, spec in d["evals"].items():
        if spec.get("optional") and spec.get("path") and not resolve_path(spec["path"], root).is_file():
            missing[set_name] = f"{resolve_path(spec['path'], root)} not found"
            continue
        items = load_source(spec, {**columns, **(spec.get("columns") or {})}, root, True, f"dataset.evals.{set_name}")
        if d.get("holdout"):
            items = [ex for ex in items if ex["instruction"].strip() not in seen]
        evals[set_name] = items
        words = spec.get("words") or sorted({ex["answer"].strip() for ex in items})
        answers[set_name] = AnswerSpec(spec["answer_type"], tuple(words) if spec["answer_type"] == "word" else ())
    if not evals:
        raise DataError(f"dataset {d['name']!r}: none of its evaluation sets exist under {root}")
    train, val = split_train_val(train, data.get("train_size"), val_size, int(data.get("seed", 42)), spare)
    return Task(name=d["name"], train=train, evals=evals, answers=answers, missing=missing, val=val)


def _outside(pool: list, chosen: list) -> list:
    ids = {id(ex) for ex in chosen}
    return [ex for ex in pool if id(ex) not in ids]


def split_train_val(pool: list, train_size: int | None, val_size: int, seed: int,
                    spare: list | None = None) -> tuple[list, list]:
    """Training subset (``subsample(pool, train_size, seed)``) and a disjoint validation set,
    drawn from what the subset left out of the pool, else from ``spare``, else carved out."""
    train = subsample(pool, train_size, seed)
    if not val_size:
        return train, []
    rest = _outside(pool, train) if train_size is not None and train_size < len(pool) else spare or []
    seen = {ex["instruction"] for ex in train}
    rest = [ex for ex in rest if ex["instruction"] not in seen]  # the files repeat some questions
    if rest:
        if val_size > len(rest):
            raise DataError(f"data.val_size={val_size} exceeds the {len(rest)} examples left outside the training set")
        return train, subsample(rest, val_size, seed + 1, "data.val_size")
    if val_size >= len(pool):
        raise DataError(f"data.val_size={val_size} leaves nothing to train on (the pool has {len(pool)} examples)")
    val = subsample(pool, val_size, seed + 1, "data.val_size")
    return _outside(train, val), val
