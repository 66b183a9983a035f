"""A task = training examples + named evaluation sets, from ``conf/dataset/*.yaml``.

``source: files`` reads LLM-Adapters files from the data directory (``train`` is one file or a
list, optionally sampled down to ``train_sample`` examples); with ``holdout: true``
every test set loses the questions whose instruction also occurs in the training file (the
HLPT paper's protocol: SVAMP 200, AQuA 51, AddSub 79, MultiArith 109, SingleEq 102, GSM8K
264). ``source: synthetic`` generates the examples in code. Files listed under ``optional``
that are absent are reported in ``Task.missing`` (and metrics.json) instead of failing the run.

``data.val_size`` examples of the training files form a validation set (the loss curves of the
HLPT paper's Fig. 4): drawn from what ``data.train_size`` (or a ``train_sample`` mixture) left
out, so the training set is the same with or without validation; carved out of the pool when
the whole pool trains (LLM-Adapters' ``val_set_size``). Synthetic tasks generate theirs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from layerpeft.data.files import DataError, data_dir, read_examples
from layerpeft.data.synthetic import synthetic_math

SOURCES = ("files", "synthetic")


@dataclass
class Task:
    name: str
    train: list[dict[str, Any]]
    evals: dict[str, list[dict[str, Any]]]
    missing: dict[str, str] = field(default_factory=dict)  # eval set → why it is absent
    val: list[dict[str, Any]] = field(default_factory=list)


def _plain(cfg: Any) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


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
    val_size = int(data.get("val_size") or 0)
    if val_size < 0:
        raise DataError(f"data.val_size={val_size} must be >= 0")
    source = d.get("source")
    if source not in SOURCES:
        raise DataError(f"dataset {d.get('name')!r}: source {source!r} is not one of {', '.join(SOURCES)}")
    if source == "synthetic":
        s = d["synthetic"]
        # Validation problems are generated beyond the training and test ones.
        n, n_eval = s["n_train"], s["n_eval"]
        every = synthetic_math(n + n_eval + val_size, s["seed"])
        train, evals, missing = every[:n], {"synthetic": every[n : n + n_eval]}, {}
        train = subsample(train, data.get("train_size"), int(data.get("seed", 42)))
        return Task(name=d["name"], train=train, evals=evals, missing=missing, val=every[n + n_eval :])
    root = data_dir(data.get("dir"))
    optional = set(d.get("optional") or [])
    evals, missing = {}, {}
    train = []
    for rel in [d["train"]] if isinstance(d.get("train"), str) else (d.get("train") or []):
        if not (root / rel).is_file() and rel in optional:
            missing[f"train:{rel}"] = f"{root / rel} not found"
            continue
        train += read_examples(root / rel)
    spare: list = []  # training-file examples outside the pool: validation comes from them first
    if d.get("train_sample"):  # a fixed mixture drawn from the files (commonsense_15k-like)
        every = train
        train = subsample(every, int(d["train_sample"]), int(d.get("train_sample_seed", 42)),
                          f"dataset {d['name']!r}: train_sample")
        spare = _outside(every, train)
    seen = {ex["instruction"].strip() for ex in train}
    for name, rel in d["eval_sets"].items():
        path = root / rel
        if not path.is_file() and name in optional:
            missing[name] = f"{path} not found"
            continue
        items = read_examples(path, need_answer=True)
        if d.get("holdout"):
            items = [ex for ex in items if ex["instruction"].strip() not in seen]
        evals[name] = items
    if not evals:
        raise DataError(f"dataset {d['name']!r}: none of its evaluation files exist under {root}")
    train, val = split_train_val(train, data.get("train_size"), val_size, int(data.get("seed", 42)), spare)
    return Task(name=d["name"], train=train, evals=evals, missing=missing, val=val)


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
