"""The training loop, readable top to bottom (nanoGPT-style), with LLM-Adapters' defaults.

One device: CUDA with bf16 autocast when present, CPU fp32 otherwise. Global batch 16 from
micro-batches of 4 (gradient accumulation), AdamW, warm-up then linear decay. The data order
of epoch e is a permutation seeded by ``seed + e`` and the RNG state is checkpointed, so a
resumed run replays exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import logging
import math
import re
import resource
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from layerpeft.data.files import DataError
from layerpeft.data.prompts import batchify, tokenize_example
from layerpeft.errors import TrainingDiverged
from layerpeft.provenance import Segment, device_name, native_bf16
from layerpeft.peft_model import get_adapters
from layerpeft.train.checkpoint import find_resumable, load_checkpoint, save_checkpoint
from layerpeft.train.ist import IST, default_mu
from layerpeft.train.loss import causal_lm_loss

log = logging.getLogger(__name__)

SCHEDULES = {
    "linear": get_linear_schedule_with_warmup,
    "cosine": get_cosine_schedule_with_warmup,
    "constant": lambda opt, warmup, total: get_constant_schedule_with_warmup(opt, warmup),
}


@dataclass
class Device:
    device: torch.device
    autocast: torch.dtype | None  # dtype of autocast, None for plain fp32

    @property
    def model_dtype(self) -> torch.dtype:
        # Under bf16 autocast the frozen base is stored in bf16: half the memory, and no cast of
        # every weight at every operation (autocast caches casts only of tensors that train).
        # Adapters and trained base weights stay fp32.
        return torch.bfloat16 if self.autocast else torch.float32

    reason: str = ""  # why this precision (``auto`` resolves per machine)

    def describe(self) -> dict:
        """What the run actually used, and why, for metrics."""
        return {"device": device_name(self.device), "precision": "bf16" if self.autocast else "fp32",
                "precision_reason": self.reason}


def pick_device(train_cfg) -> Device:
    """The device and precision of ``train.device``/``train.precision``. ``auto`` precision is
    bf16 autocast where bf16 is fast (CUDA; CPUs with AVX512-BF16 or AMX, where a bf16 matrix
    product runs several times faster than fp32) and fp32 elsewhere (on a CPU without native
    bf16 it is emulated and several times slower)."""
    want = train_cfg.device
    if want not in ("auto", "cpu", "cuda"):
        raise ValueError(f"train.device={want!r} is not one of auto, cpu, cuda")
    if want == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device=cuda but no CUDA device is available")
    dev = torch.device("cuda" if want == "cuda" or (want == "auto" and torch.cuda.is_available()) else "cpu")
    precision = train_cfg.precision
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"train.precision={precision!r} is not one of auto, fp32, bf16")
    if precision != "auto":
        return Device(dev, torch.bfloat16 if precision == "bf16" else None, f"train.precision={precision}")
    if dev.type == "cuda":
        return Device(dev, torch.bfloat16, "auto: CUDA")
    if native_bf16():
        return Device(dev, torch.bfloat16, "auto: the CPU computes bf16 natively (AVX512-BF16/AMX)")
    return Device(dev, None, "auto: the CPU has no native bf16 (it would be emulated, slower than fp32)")


#: LLM-Adapters' values, used when neither train.* nor the method's recipe sets them.
RECIPE_DEFAULTS = {"warmup_steps": 100, "weight_decay": 0.0, "schedule": "linear"}


def recipe(cfg, key: str):
    """``train.<key>`` if set, else the method's ``train.<key>`` (its paper's recipe), else the default."""
    if cfg.train.get(key) is not None:
        return cfg.train[key]
    return (cfg.method.get("train") or {}).get(key, RECIPE_DEFAULTS.get(key))


def warmup_steps(cfg, total: int) -> int:
    """Warm-up length: ``train.warmup_steps``, else ``train.warmup_ratio`` of the steps, else the
    method's recipe (steps or ratio: PARA warms up over 6 % of the steps), else 100. A ratio
    rounds up, as the HF Trainer's ``warmup_ratio`` does."""
    method = cfg.method.get("train") or {}
    for source in (cfg.train, method):
        if source.get("warmup_steps") is not None:
            return int(source["warmup_steps"])
        if source.get("warmup_ratio") is not None:
            return math.ceil(float(source["warmup_ratio"]) * total)
    return RECIPE_DEFAULTS["warmup_steps"]


def resolve_lr(cfg) -> float:
    if cfg.train.lr is not None:
        return float(cfg.train.lr)
    by_dataset = cfg.method.get("lr_by_dataset") or {}
    return float(by_dataset.get(cfg.dataset.name, cfg.method.lr))


def make_ist(model, cfg, num_examples: int) -> IST | None:
    ist_cfg = cfg.get("ist")
    if ist_cfg is None or not ist_cfg.enabled:
        return None
    mu = ist_cfg.mu if ist_cfg.mu is not None else default_mu(ist_cfg.variant, cfg.dataset.name)
    return IST(get_adapters(model), ist_cfg, mu, num_examples)


def reset_peak_memory(device: torch.device) -> None:
    """Start measuring peak memory now: CUDA's allocator peak, or on Linux the process's peak
    resident set (VmHWM, reset through /proc/self/clear_refs), so that jobs of an in-process
    sweep do not inherit the peaks of the jobs before them."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux, or not allowed: peak_memory_mb falls back to the lifetime peak


def peak_memory_mb(device: torch.device) -> float:
    """Peak since ``reset_peak_memory``: allocated CUDA memory, or resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+)\s+kB", status).group(1)) / 1024
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _loss(model, batch, dev: Device) -> torch.Tensor:
    with torch.autocast(dev.device.type, dtype=dev.autocast, enabled=dev.autocast is not None):
        return causal_lm_loss(model, batch)


def micro_batches(data: list[dict[str, Any]], indices: list[int], size: int, pad_id: int, packed: bool,
                  device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Model inputs for ``data[indices]`` in micro-batches of ``size`` examples."""
    return [{k: v.to(device) for k, v in batchify([data[j] for j in indices[i : i + size]], pad_id, packed).items()}
            for i in range(0, len(indices), size)]


@torch.inference_mode()
def validation_loss(model, batches: list[dict[str, torch.Tensor]], dev: Device) -> float:
    """Mean loss per predicted token over ``batches``, in eval mode (no dropout); the model is
    left in training mode. Also IST's probe loss: a batch split into micro-batches weighs each
    token once, as the whole batch in one forward would."""
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        n = int((batch["labels"][:, 1:] != -100).sum())
        total += _loss(model, batch, dev).item() * n
        count += n
    model.train()
    return total / max(count, 1)


def run_header(model, cfg, dev: Device, n_train: int, n_val: int, total: int, per_epoch: int, lr: float,
               warmup: int) -> str:
    """What is about to train, where and how, for the console and train.log."""
    adapters = get_adapters(model)
    plan = adapters.plan
    segments = ", ".join(f"{s.module} {s.start}-{s.end - 1}" for s in plan.segments if s.module != "none")
    base = sum(p.numel() for p in model.parameters()) - adapters.num_params()
    d = dev.describe()
    return "\n".join([
        f"model {cfg.model.name}: {base:,} parameters, frozen in {str(dev.model_dtype).removeprefix('torch.')}",
        f"plan {plan.method}: {segments} of {plan.num_layers} layers; {adapters.num_params():,} trainable "
        f"({100 * adapters.num_params() / base:.3f} %)",
        f"device {d['device']} ({torch.get_num_threads()} threads), precision {d['precision']} ({d['precision_reason']})",
        f"data {cfg.dataset.name}: {n_train:,} training and {n_val:,} validation examples; {total} optimizer steps "
        f"({per_epoch} per epoch) of {cfg.train.batch_size} examples in micro-batches of {cfg.train.micro_batch_size}"
        f"{', packed' if cfg.train.packing else ''}; lr {lr:g}, {warmup} warm-up steps, seed {cfg.seed}",
    ])


def trainable_examples(tokenizer, examples: list[dict[str, Any]], data_cfg, what: str) -> tuple[list[dict], int]:
    """Tokenised examples, without those that would train on no token (a prompt longer than
    ``data.cutoff_len`` with ``train_on_inputs=false``: their loss is 0/0, a NaN that would read
    as divergence); how many were left out is printed and returned."""
    data = [tokenize_example(tokenizer, ex, data_cfg.cutoff_len, data_cfg.train_on_inputs) for ex in examples]
    kept = [d for d in data if any(label != -100 for label in d["labels"][1:])]
    dropped = len(data) - len(kept)
    if not kept:
        raise DataError(f"none of the {len(data)} {what} examples has a token to train on: every prompt is longer "
                        f"than data.cutoff_len={data_cfg.cutoff_len} (train_on_inputs=false)")
    if dropped:
        log.warning(f"data: {dropped} of {len(data)} {what} examples left out: their prompt fills data.cutoff_len="
                    f"{data_cfg.cutoff_len} and train_on_inputs=false leaves no token to train on")
    return kept, dropped


def examples_loss(model, tokenizer, data: list[dict[str, Any]], micro_batch_size: int, dev: Device,
                  packed: bool = True):
    """``loss(indices)``: the validation loss (eval mode, no gradients) of the tokenised training
    examples ``data[i]`` for i in indices, in micro-batches — what IST's probes measure."""

    def loss(indices: list[int]) -> float:
        return validation_loss(model, micro_batches(data, indices, micro_batch_size, tokenizer.pad_token_id, packed,
                                                    dev.device), dev)

    return loss


def train(model, tokenizer, examples: list[dict[str, Any]], cfg, run_dir: Path, dev: Device, tracker,
          val: list[dict[str, Any]] | None = None, segment: Segment | None = None) -> dict[str, Any]:
    """Train the model's adapters in place; returns the ``train`` block of metrics.json.

    With ``val`` examples, the validation loss is measured at the end of every epoch.
    ``segment`` is this process's share of the run: checkpoints record it after the segments of
    the processes before (returned as ``segments_before`` when resuming).
    """
    t_cfg, d_cfg = cfg.train, cfg.data
    data, dropped = trainable_examples(tokenizer, examples, d_cfg, "training")
    steps_per_epoch = math.ceil(len(data) / t_cfg.batch_size)
    val_data = trainable_examples(tokenizer, val, d_cfg, "validation")[0] if val else []
    packed = bool(t_cfg.packing)
    val_batches = micro_batches(val_data, list(range(len(val_data))), t_cfg.micro_batch_size,
                                tokenizer.pad_token_id, packed, dev.device)
    total = int(t_cfg.max_steps) if t_cfg.max_steps else int(t_cfg.epochs) * steps_per_epoch
    params = [p for p in model.parameters() if p.requires_grad]
    lr = resolve_lr(cfg)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=float(recipe(cfg, "weight_decay")))
    schedule = recipe(cfg, "schedule")
    warmup = warmup_steps(cfg, total)
    scheduler = SCHEDULES[schedule](optimizer, warmup, total)
    log.info(run_header(model, cfg, dev, len(data), len(val_data), total, steps_per_epoch, lr, warmup))

    ist = make_ist(model, cfg, len(data))
    probe_loss = examples_loss(model, tokenizer, data, t_cfg.micro_batch_size, dev, packed)

    step, history, grad_history, val_history, tokens, wall, before = 0, [], [], [], 0, 0.0, []
    resume_from = find_resumable(run_dir) if t_cfg.resume else None
    if resume_from is not None:
        state = load_checkpoint(resume_from, model, optimizer)
        step, history, tokens, wall = state["step"], state["loss_history"], state["tokens"], state["wall_s"]
        val_history, grad_history = state.get("val_history", []), state.get("grad_norm_history", [])
        before = state.get("segments", [])
        if ist is not None:
            ist.load(state["ist"], state["tensors"])
        with warnings.catch_warnings():  # replaying the schedule; torch warns as no optimizer step came first
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            for _ in range(step):
                scheduler.step()
        log.info(f"resumed from {resume_from} at step {step}/{total}")

    reset_peak_memory(dev.device)
    model.train()
    bar = tqdm(total=total, initial=step, desc="train", dynamic_ncols=True)
    last_ckpt = resume_from
    order: torch.Tensor | None = None

    def diverged(what: str) -> TrainingDiverged:
        bar.close()
        return TrainingDiverged(
            f"training diverged: {what}; last verified checkpoint: {last_ckpt or 'none yet'}. Lower train.lr (now {lr:g}) "
            "or check the data.",
            {"steps": step, "loss_history": history, "grad_norm_history": grad_history,
             "val_loss_history": val_history, "lr": lr})

    while step < total:
        epoch, pos = divmod(step, steps_per_epoch)
        if pos == 0 or order is None:
            order = torch.randperm(len(data), generator=torch.Generator().manual_seed(int(cfg.seed) + epoch))
        batch_idx = order[pos * t_cfg.batch_size : (pos + 1) * t_cfg.batch_size].tolist()
        t0 = time.perf_counter()
        losses, step_tokens = [], 0
        micro = [batch_idx[i : i + t_cfg.micro_batch_size] for i in range(0, len(batch_idx), t_cfg.micro_batch_size)]
        batches = micro_batches(data, batch_idx, t_cfg.micro_batch_size, tokenizer.pad_token_id, packed, dev.device)
        if ist is not None:  # one selection per optimizer step, after the importance update if due
            probes = len(ist.trajectory)
            ist.probe(step, probe_loss)
            if len(ist.trajectory) > probes:
                tracker.log({f"ist/importance/layer_{layer}": v
                             for layer, v in zip(ist.layers, ist.importance.tolist())}, step=step)
            ist.select()
        for chunk, batch in zip(micro, batches):
            loss = _loss(model, batch, dev)
            if not torch.isfinite(loss):
                raise diverged(f"training loss became {loss.item()} at optimizer step {step + 1} (epoch {epoch + 1})")
            (loss * len(chunk) / len(batch_idx)).backward()
            losses.append(loss.item())
            step_tokens += sum(len(data[i]["input_ids"]) for i in chunk)
        # The gradient's norm before clipping (the HF Trainer clips at 1.0, as LLM-Adapters, IST
        # and PARA trained); max_grad_norm 0 or null measures it without clipping.
        clip = float(t_cfg.max_grad_norm or 0.0)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf")))
        if not math.isfinite(grad_norm):
            raise diverged(f"the gradient norm became {grad_norm} at optimizer step {step + 1}")
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if not torch.stack([p.isfinite().all() for p in params]).all():
            raise diverged(f"trained parameters became non-finite at optimizer step {step + 1}")
        step += 1
        dt = time.perf_counter() - t0
        wall += dt
        tokens += step_tokens
        step_loss = sum(losses) / len(losses)
        history.append([step, step_loss])
        grad_history.append([step, grad_norm])
        bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{step_tokens / dt:.0f}")
        bar.update(1)
        if val_batches and (step % steps_per_epoch == 0 or step == total):
            val_loss = validation_loss(model, val_batches, dev)
            val_history.append([step / steps_per_epoch, val_loss])
            if not math.isfinite(val_loss):
                raise diverged(f"validation loss became {val_loss} after optimizer step {step}")
            log.info(f"epoch {step / steps_per_epoch:.2f}: validation loss {val_loss:.4f} (training loss {step_loss:.4f})")
            tracker.log({"val/loss": val_loss}, step=step)
        if step % t_cfg.log_every == 0:
            tracker.log(
                {"train/loss": step_loss, "train/lr": scheduler.get_last_lr()[0], "train/tokens_per_s": step_tokens / dt,
                 "train/grad_norm": grad_norm, "train/epoch": step / steps_per_epoch},
                step=step,
            )
        if step % t_cfg.save_steps == 0 and step < total:
            ist_json, ist_tensors = ist.state() if ist is not None else (None, None)
            last_ckpt = save_checkpoint(
                run_dir, model, optimizer,
                {"step": step, "loss_history": history, "val_history": val_history, "grad_norm_history": grad_history,
                 "tokens": tokens, "wall_s": wall, "ist": ist_json,
                 "segments": before + ([segment.record()] if segment is not None else [])},
                ist_tensors,
            )
    bar.close()
    model.eval()
    if ist is not None:
        ist.release()
    return {
        "segments_before": before,
        "dropped_examples": dropped,
        "ist": ist.summary() if ist is not None else None,
        "steps": step,
        "final_loss": history[-1][1] if history else None,
        "tokens_per_s": tokens / wall if wall else None,
        "peak_memory_mb": peak_memory_mb(dev.device),
        **dev.describe(),
        "wall_s": wall,
        "lr": lr,
        "schedule": schedule,
        "weight_decay": float(recipe(cfg, "weight_decay")),
        "warmup_steps": warmup,
        "max_grad_norm": float(t_cfg.max_grad_norm or 0.0),
        "steps_per_epoch": steps_per_epoch,
        "loss_history": history,
        "grad_norm_history": grad_history,  # [step, norm before clipping]
        "val_loss_history": val_history,  # [epoch (fractional at the end of a max_steps run), loss]
    }
