"""``layerpeft train``: plan → data → model → train → save → evaluate → metrics.json.

Everything that can be wrong with the inputs (config values, plan, options, data files, the run
directory, a resume's settings) is checked before the model loads or anything is written; a run
refused there leaves nothing behind. Inside a multirun sweep a failing job is recorded in its
run directory (``metrics.json`` with ``status: failed`` or ``diverged``) and the sweep goes on;
``SweepSummary`` lists the failures at the end and the sweep exits non-zero. A single run
re-raises.

``metrics.json`` is first written when training ends (``status: evaluating``), so a run stopped
while evaluating keeps its training record, and ``train.resume=true`` then evaluates the saved
adapter without training again. A run whose loss, parameters or validation loss become
non-finite ends ``status: diverged``, with no adapter and a non-zero exit code.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from layerpeft.checks import check_train
from layerpeft.config import with_default_dataset
from layerpeft.data.files import DataError
from layerpeft.errors import TrainingDiverged, UserError
from layerpeft.plan import PlanError
from layerpeft.rundir import (ADAPTER_DIR, CONFIG, IST_FILE, METRICS, PLAN, PREDICTIONS, RunLock, discard_hydra_only,
                              holds_run, load_stored_config, read_metrics, resume_changes, write_json)
from layerpeft.sweep import FAILED

if TYPE_CHECKING:
    from layerpeft.provenance import Segment

# torch, transformers and the methods are imported where they are first needed, after the config
# values are checked: a mistyped value is refused in about a second instead of after the
# seconds those imports take.


log = logging.getLogger(__name__)


def sweep_group() -> str | None:
    """A sweep's W&B group: its directory's date and time (``2026-12-02/10-11-12-123456``)."""
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    sweep = Path(hc.sweep.dir)
    return f"{sweep.parent.name}/{sweep.name}"


def prepare(cfg: DictConfig, run_dir: Path):
    """Everything checked before anything is written: (plan, task, device, the settings a resume
    changes)."""
    with_default_dataset(cfg)
    check_train(cfg)
    from layerpeft.commands.plan import plan_for
    from layerpeft.data.tasks import load_task
    from layerpeft.preflight import preflight
    from layerpeft.train.ist import check_plan as check_ist_plan
    from layerpeft.train.loop import pick_device

    plan = plan_for(cfg)
    if cfg.ist.enabled:
        check_ist_plan(plan.kinds)
    task = load_task(cfg.dataset, cfg.data)
    dev = pick_device(cfg.train)
    problems = preflight(cfg.model, plan, dev.model_dtype, dev.device, training=True,
                         allow_cpu=bool(cfg.train.get("allow_cpu")))
    if problems:
        raise UserError("\n".join(problems))
    changes = {}
    if cfg.train.resume and (run_dir / CONFIG).is_file():
        changes = resume_changes(load_stored_config(run_dir / CONFIG), cfg, run_dir)
    elif holds_run(run_dir):
        raise UserError(f"{run_dir} already holds a run: pass train.resume=true to continue it, or choose "
                        "another hydra.run.dir")
    return plan, task, dev, changes


def execute(cfg: DictConfig, run_dir: Path, plan, task, dev, changes: dict) -> dict:
    from layerpeft.eval.generate import evaluate
    from layerpeft.models.loading import load_model
    from layerpeft.peft_model import load_adapter
    from layerpeft.provenance import Segment, provenance
    from layerpeft.tracking import make_tracker

    segment = Segment(dev.device)
    segment.info.update({"precision": dev.describe()["precision"], "resume_changed": changes})
    earlier = read_metrics(run_dir) if cfg.train.resume else None
    if earlier is not None and earlier.get("status") == "ok":
        log.info(f"{run_dir} has finished (status ok): nothing to resume")
        return earlier
    OmegaConf.save(cfg, run_dir / CONFIG, resolve=True)
    tracker = make_tracker(cfg, run_dir, group=sweep_group())
    failed = True
    try:
        model, tok = load_model(cfg.model, dtype=dev.model_dtype, device=dev.device)
        if earlier is not None and earlier.get("status") == "evaluating":
            # Training finished in an earlier process that stopped while evaluating: score its adapter.
            if (run_dir / ADAPTER_DIR).is_dir():
                load_adapter(model, run_dir / ADAPTER_DIR)
            metrics, before = earlier, earlier.get("segments", [])
            log.info(f"resumed {run_dir}: training had finished, evaluating its adapter")
        else:
            segment.did("train")
            try:
                metrics = train_and_save(cfg, plan, task, model, tok, dev, tracker, run_dir, segment)
            except TrainingDiverged as e:
                write_json(run_dir / METRICS, {"status": "diverged", "error": str(e), "model": cfg.model.name,
                                               "method": plan.method, "dataset": task.name, "train": e.record,
                                               "provenance": provenance(cfg.model, dev.device, dev.model_dtype),
                                               **timing([], segment)})
                raise
            before = (metrics.get("train") or {}).pop("segments_before", [])
            metrics["provenance"] = provenance(cfg.model, dev.device, dev.model_dtype)
            # Written before evaluating, so a run stopped there keeps its training record and
            # `train.resume=true` goes straight to evaluation.
            write_json(run_dir / METRICS, {**metrics, **timing(before, segment)})
        if cfg.eval.enabled:
            segment.did("evaluate")
            metrics.update(evaluate(model, tok, task.evals, task.answers, cfg.eval, run_dir / PREDICTIONS, task.missing,
                                    cfg.dataset.max_new_tokens))
            tracker.log_eval(metrics, run_dir / PREDICTIONS)
        metrics["efficiency"]["inference_tokens_per_s"] = metrics.get("inference_tokens_per_s")
        metrics["status"] = "ok"
        metrics.update(timing(before, segment))
        write_json(run_dir / METRICS, metrics)
        tracker.log_summary({"trainable_params": metrics["trainable_params"], "wall_s": metrics["wall_s"],
                             "peak_memory_mb": metrics["efficiency"].get("peak_memory_mb")})
        tracker.log_adapter(run_dir / ADAPTER_DIR)
        failed = False
        return metrics
    finally:
        tracker.finish(failed=failed)


def timing(before: list[dict], segment: Segment) -> dict:
    """The run's processes so far and its total time (``wall_s``: their sum)."""
    segments = [*before, segment.record()]
    return {"segments": segments, "wall_s": sum(s["seconds"] for s in segments)}


def train_and_save(cfg: DictConfig, plan, task, model, tok, dev, tracker, run_dir: Path, segment: Segment) -> dict:
    """Apply the plan, train, save the adapter; the run's metrics so far (status ``evaluating``)."""
    from layerpeft.export import base_location, export_peft, peft_refusal
    from layerpeft.peft_model import apply_plan, get_adapters, save_adapter
    from layerpeft.train.loop import train

    adapters = apply_plan(model, plan, seed=int(cfg.seed))
    layer_params = [adapters.layer_params(i) for i in range(plan.num_layers)]
    write_json(run_dir / PLAN, {**plan.to_dict(), "layer_params": layer_params})
    tracker.log_plan(plan.to_dict(), layer_params)
    metrics: dict = {"status": "evaluating", "model": cfg.model.name, "method": plan.method,
                     "dataset": task.name, "trainable_params": adapters.num_params(),
                     "total_params": sum(p.numel() for p in model.parameters())}
    # Kept in host memory: for full fine-tuning this is a second copy of the model.
    initial = {n: p.detach().to("cpu", copy=True) for n, p in adapters.trainable().items()}
    if adapters.num_params():
        metrics["train"] = train(model, tok, task.train, cfg, run_dir, dev, tracker, val=task.val, segment=segment)
        metrics["train"]["trainable_params"] = adapters.num_params()
        ist = metrics["train"].pop("ist")
        if ist is not None:  # the trajectory (for the heat map) goes beside the metrics
            write_json(run_dir / IST_FILE, ist)
            metrics["train"]["ist"] = {k: v for k, v in ist.items() if k not in ("trajectory", "selections")}
        get_adapters(model).fold()
        save_adapter(model, run_dir / ADAPTER_DIR)
        if peft_refusal(model) is None:  # peft's layout too, beside ours (PeftModel.from_pretrained)
            export_peft(model, run_dir / ADAPTER_DIR / "peft", base_location(cfg.model))
    metrics["efficiency"] = efficiency(metrics, adapters, initial, run_dir)
    return metrics


def efficiency(metrics: dict, adapters, initial: dict, run_dir: Path) -> dict:
    """The PEFT survey's Guideline 2 figures for one run."""
    total = metrics["total_params"]
    changed = sum(int((p.detach().cpu() != initial[n]).sum()) for n, p in adapters.trainable().items())
    adapter = run_dir / ADAPTER_DIR / "adapter.safetensors"
    train_m = metrics.get("train") or {}
    return {
        "trainable_params": metrics["trainable_params"],
        "trainable_pct": 100.0 * metrics["trainable_params"] / total,
        "changed_params": changed,
        "changed_pct": 100.0 * changed / total,
        "peak_memory_mb": train_m.get("peak_memory_mb"),
        "train_tokens_per_s": train_m.get("tokens_per_s"),
        "inference_tokens_per_s": None,  # filled in after evaluation
        "adapter_bytes": adapter.stat().st_size if adapter.is_file() else 0,
    }


def run(cfg: DictConfig) -> dict | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    owned = False  # this job holds the lock of a directory that is its own
    try:
        with RunLock(run_dir):
            owned = not holds_run(run_dir) or bool(cfg.train.resume)
            try:
                prepared = prepare(cfg, run_dir)
            except (UserError, PlanError, DataError):
                if not sweep:  # a refused run leaves nothing behind (a sweep records the failure)
                    discard_hydra_only(run_dir)
                raise
            metrics = execute(cfg, run_dir, *prepared)
    except Exception as e:
        if not sweep:
            raise
        # In a sweep the failure is recorded and summarised at the end; the next job runs. A
        # job that failed while evaluating keeps the training record written before it; a job
        # refused from another run's directory writes nothing there.
        status = "diverged" if isinstance(e, TrainingDiverged) else "failed"
        if owned:
            write_json(run_dir / METRICS, {**(read_metrics(run_dir) or {}), "status": status,
                                           "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
        log.error(f"job {status} ({run_dir}): {type(e).__name__}: {e}")
        FAILED.append(str(run_dir))
        return None
    print_summary(metrics, run_dir)
    return metrics


def print_summary(metrics: dict, run_dir: Path) -> None:
    from layerpeft.report.tables import accuracy_table

    if "datasets" in metrics:
        log.info(accuracy_table([(run_dir.name, metrics)]))
    log.info(f"run directory: {run_dir}")
