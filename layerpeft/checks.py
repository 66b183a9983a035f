"""Every number and choice a command reads, checked when the config is composed — before any
weights load or any file is written — with one line naming the key, the value and what is
allowed. A bad value found later (after training, say) would cost the run; one accepted
silently (``max_steps=0`` training three epochs) would make it lie.
"""

from __future__ import annotations

from typing import Any

from layerpeft.errors import UserError

SCHEDULES = ("linear", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
LOGGERS = ("wandb", "none")
LOGGER_MODES = ("auto", "online", "offline", "disabled")


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_int(cfg, key: str, optional: bool = False) -> None:
    value = _get(cfg, key)
    if optional and value is None:
        return
    if not _int(value) or value <= 0:
        raise UserError(f"{key}={value!r}: must be a positive integer{' or null' if optional else ''}")


def non_negative(cfg, key: str, optional: bool = True, integer: bool = False, below: float | None = None) -> None:
    value = _get(cfg, key)
    if optional and value is None:
        return
    kind = "integer" if integer else "number"
    ok = (_int(value) if integer else _number(value)) and value >= 0 and (below is None or value < below)
    if not ok:
        bound = f" below {below}" if below is not None else ""
        raise UserError(f"{key}={value!r}: must be a {kind} >= 0{bound}{' or null' if optional else ''}")


def choice(cfg, key: str, choices) -> None:
    value = _get(cfg, key)
    if value not in choices:
        raise UserError(f"{key}={value!r}: must be one of {', '.join(map(str, choices))}")


def _get(cfg, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node.get(part) if node is not None else None
    return node


def check_model(cfg) -> None:
    """Where the base model comes from; a random model needs the architecture's numbers."""
    from layerpeft.models.loading import SOURCES, arch_config
    from layerpeft.models.tiny import byte_tokenizer

    choice(cfg, "model.source", SOURCES)
    if cfg.model.source != "random":
        return
    if not (cfg.model.get("arch") or {}).get("model_type"):
        raise UserError(f"model.source='random': model {cfg.model.get('name')} has no arch numbers "
                        "(arch.model_type and the sizes) to build")
    vocab, needed = arch_config(cfg.model).vocab_size, len(byte_tokenizer())
    if vocab < needed:
        raise UserError(f"model.arch.vocab_size={vocab}: a random model needs at least the byte tokenizer's "
                        f"{needed} tokens")


def check_device(cfg) -> None:
    choice(cfg, "train.device", DEVICES)
    if cfg.train.get("allow_cpu") is not None:
        choice(cfg, "train.allow_cpu", (True, False))
    choice(cfg, "train.precision", PRECISIONS)
    if cfg.train.device == "cuda" and not _cuda_available():
        raise UserError("train.device='cuda': no CUDA device is available here (use auto or cpu)")


def _cuda_available() -> bool:
    import torch  # here, not at the top: the other checks run before torch is imported

    return torch.cuda.is_available()


def check_eval(cfg) -> None:
    """``eval.*`` (and the protocol's constraints on them), and the dataset's evaluation sets."""
    from layerpeft.data.tasks import check_dataset
    from layerpeft.eval.protocol import resolve

    positive_int(cfg, "eval.batch_size")
    positive_int(cfg, "eval.num_beams", optional=True)
    positive_int(cfg, "eval.max_new_tokens", optional=True)
    positive_int(cfg, "eval.limit", optional=True)
    dataset = cfg.get("dataset")
    if dataset is not None:
        check_dataset(dataset)
    try:
        resolve(cfg.eval, dataset.get("max_new_tokens") if dataset is not None else None)
    except ValueError as e:
        raise UserError(str(e)) from None


def check_train(cfg) -> None:
    """Everything ``layerpeft train`` reads besides the plan and the data files (checked by
    ``plan_for`` and ``load_task``, also before any weights load)."""
    if not _int(cfg.get("seed")):
        raise UserError(f"seed={cfg.get('seed')!r}: must be an integer")
    for key in ("train.batch_size", "train.micro_batch_size", "train.epochs", "train.save_steps", "train.log_every"):
        positive_int(cfg, key)
    if cfg.train.batch_size % cfg.train.micro_batch_size:
        raise UserError(f"train.batch_size={cfg.train.batch_size}: must be a multiple of "
                        f"train.micro_batch_size={cfg.train.micro_batch_size}")
    positive_int(cfg, "train.max_steps", optional=True)
    non_negative(cfg, "train.lr")
    non_negative(cfg, "train.warmup_steps", integer=True)
    non_negative(cfg, "train.warmup_ratio", below=1.0)
    non_negative(cfg, "train.weight_decay")
    non_negative(cfg, "train.max_grad_norm")
    if cfg.train.get("schedule") is not None:
        choice(cfg, "train.schedule", SCHEDULES)
    elif (cfg.method.get("train") or {}).get("schedule") is not None:
        choice(cfg, "method.train.schedule", SCHEDULES)
    for key in ("data.cutoff_len",):
        positive_int(cfg, key)
    positive_int(cfg, "data.train_size", optional=True)
    non_negative(cfg, "data.val_size", optional=False, integer=True)
    choice(cfg, "logger.name", LOGGERS)
    if cfg.logger.name == "wandb":
        choice(cfg, "logger.mode", LOGGER_MODES)
    if cfg.eval.enabled:
        check_eval(cfg)
    else:
        from layerpeft.data.tasks import check_dataset

        check_dataset(cfg.dataset)
    # last: these import torch or transformers
    check_device(cfg)
    if cfg.get("ist") is not None and cfg.ist.enabled:
        from layerpeft.train.ist import check_config as check_ist

        check_ist(cfg.ist)
    check_model(cfg)
