"""``layerpeft train``: plan → data → model → train → save → evaluate → metrics.json.

Everything that can be wrong with the inputs (plan, options, data files) is checked before
the model loads. Inside a multirun sweep a failing job is recorded in its run directory
(``metrics.json`` with ``status: failed``) and the sweep goes on; ``SweepSummary`` lists the
failures at the end. A single run re-raises.

``metrics.json`` is first written when training ends (``status: evaluating``), so a run stopped
while evaluating keeps its training record, and ``train.resume=true`` then evaluates the saved
adapter without training again.
"""

from __future__ import annotations

import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from layerpeft.commands.plan import plan_for
from layerpeft.data.tasks import load_task
from layerpeft.eval.generate import evaluate
from layerpeft.export import export_peft_lora, peft_compatible
from layerpeft.models.loading import load_model
from layerpeft.peft_model import apply_plan, get_adapters, load_adapter, save_adapter
from layerpeft.provenance import Segment, provenance
from layerpeft.rundir import ADAPTER_DIR, CONFIG, IST_FILE, METRICS, PLAN, PREDICTIONS, read_metrics, write_json
from layerpeft.tracking import make_tracker
from layerpeft.train.loop import pick_device, train


def sweep_group() -> str | None:
    hc = HydraConfig.get()
    return Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None


def execute(cfg: DictConfig, run_dir: Path) -> dict:
    plan = plan_for(cfg)
    task = load_task(cfg.dataset, cfg.data)
    dev = pick_device(cfg.train)
    segment = Segment(dev.device)
    OmegaConf.save(cfg, run_dir / CONFIG, resolve=True)
    tracker = make_tracker(cfg, run_dir, group=sweep_group())
    failed = True
    try:
        model, tok = load_model(cfg.model, dtype=dev.model_dtype, device=dev.device)
        trained = read_metrics(run_dir) if cfg.train.resume else None
        if trained is not None and trained.get("status") == "evaluating":
            # Training finished in an earlier process that stopped while evaluating: score its adapter.
            if (run_dir / ADAPTER_DIR).is_dir():
                load_adapter(model, run_dir / ADAPTER_DIR)
            metrics, before = trained, trained.get("segments", [])
            print(f"resumed {run_dir}: training had finished, evaluating its adapter")
        else:
            segment.did("train")
            metrics = train_and_save(cfg, plan, task, model, tok, dev, tracker, run_dir, segment)
            before = (metrics.get("train") or {}).pop("segments_before", [])
            metrics["provenance"] = provenance(cfg.model, dev.device, dev.model_dtype)
            # Written before evaluating, so a run stopped there keeps its training record and
            # `train.resume=true` goes straight to evaluation.
            write_json(run_dir / METRICS, {**metrics, **timing(before, segment)})
        if cfg.eval.enabled:
            segment.did("evaluate")
            metrics.update(evaluate(model, tok, task.evals, cfg.eval, run_dir / PREDICTIONS, task.missing,
                                    cfg.dataset.max_new_tokens))
            tracker.log_eval(metrics)
        metrics["efficiency"]["inference_tokens_per_s"] = metrics.get("inference_tokens_per_s")
        metrics["status"] = "ok"
        metrics.update(timing(before, segment))
        write_json(run_dir / METRICS, metrics)
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
    adapters = apply_plan(model, plan, seed=int(cfg.seed))
    write_json(run_dir / PLAN, {**plan.to_dict(), "layer_params": [adapters.layer_params(i) for i in range(plan.num_layers)]})
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
        if peft_compatible(model):
            export_peft_lora(model, run_dir / ADAPTER_DIR / "peft", cfg.model.get("hub_id") or cfg.model.name)
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
    try:
        metrics = execute(cfg, run_dir)
    except Exception as e:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        # In a sweep the failure is recorded and summarised at the end; the next job runs.
        # A job that failed while evaluating keeps the training record written before it.
        write_json(run_dir / METRICS, {**(read_metrics(run_dir) or {}), "status": "failed",
                                       "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
        print(f"job failed ({run_dir}): {type(e).__name__}: {e}")
        return None
    print_summary(metrics, run_dir)
    return metrics


def print_summary(metrics: dict, run_dir: Path) -> None:
    from layerpeft.report.tables import accuracy_table

    if "datasets" in metrics:
        print(accuracy_table([(run_dir.name, metrics)]))
    print(f"run directory: {run_dir}")
