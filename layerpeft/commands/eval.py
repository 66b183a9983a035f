"""``layerpeft eval``: score a finished run (``run=DIR``) or a base model (``method=none``)."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from layerpeft.checks import check_device, check_eval, check_model
from layerpeft.data.files import DataError
from layerpeft.data.tasks import load_task
from layerpeft.errors import UserError
from layerpeft.eval.generate import evaluate
from layerpeft.models.loading import load_model, meta_model
from layerpeft.peft_model import check_adapter, load_adapter
from layerpeft.plan import PlanError
from layerpeft.preflight import preflight
from layerpeft.provenance import Segment, provenance
from layerpeft.report.tables import accuracy_table
from layerpeft.rundir import (ADAPTER_DIR, CONFIG, METRICS, PREDICTIONS, RunLock, discard_hydra_only,
                              load_stored_config, write_json)
from layerpeft.tracking import make_tracker
from layerpeft.train.loop import pick_device

log = logging.getLogger(__name__)


def prepare(cfg: DictConfig):
    """(the run's stored config or None, the task, the device), all checked before anything loads."""
    run_cfg = None
    if cfg.run is not None:
        run_dir = Path(cfg.run)
        if not (run_dir / CONFIG).is_file():
            raise UserError(f"run={run_dir}: not a layerpeft run directory (no {CONFIG})")
        run_cfg = load_stored_config(run_dir / CONFIG)
        if (run_dir / ADAPTER_DIR).is_dir():
            check_adapter(meta_model(run_cfg.model), run_dir / ADAPTER_DIR)
        elif run_cfg.method.name != "none":
            raise UserError(f"run={run_dir}: no {ADAPTER_DIR}/ to evaluate (the run did not finish training, or "
                            f"diverged); evaluating the base model under the label {run_cfg.method.name!r} would lie")
    elif cfg.method.name != "none":
        raise UserError(f"method={cfg.method.name} is untrained here: pass run=DIR of a trained run, or method=none")
    dataset = cfg.get("dataset") or (run_cfg.dataset if run_cfg is not None else None)
    if dataset is None:
        raise UserError("no dataset: pass dataset=math|math_full|synthetic_math|…")
    with open_dict(cfg):
        cfg.dataset = dataset
        if cfg.eval.max_new_tokens is None:
            cfg.eval.max_new_tokens = dataset.max_new_tokens
    check_eval(cfg)
    check_model(run_cfg if run_cfg is not None else cfg)
    check_device(cfg)
    task, dev = load_task(dataset, cfg.data), pick_device(cfg.train)
    problems = preflight(run_cfg.model if run_cfg is not None else cfg.model, None, dev.model_dtype, dev.device,
                         training=False)
    if problems:
        raise UserError("\n".join(problems))
    return run_cfg, task, dev


def run(cfg: DictConfig) -> dict:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    with RunLock(out_dir):
        try:
            run_cfg, task, dev = prepare(cfg)
        except (UserError, PlanError, DataError):
            discard_hydra_only(out_dir)
            raise
        segment = Segment(dev.device)
        segment.did("evaluate")
        model_cfg = run_cfg.model if run_cfg is not None else cfg.model
        model, tok = load_model(model_cfg, dtype=dev.model_dtype, device=dev.device)
        if run_cfg is not None and (Path(cfg.run) / ADAPTER_DIR).is_dir():
            load_adapter(model, Path(cfg.run) / ADAPTER_DIR)
        OmegaConf.save(cfg, out_dir / CONFIG, resolve=True)
        metrics = {"model": model_cfg.name, "method": run_cfg.method.name if run_cfg is not None else "none",
                   "dataset": cfg.dataset.name, "run": cfg.run, "status": "ok",
                   "provenance": provenance(model_cfg, dev.device, dev.model_dtype)}
        tracker = make_tracker(cfg, out_dir)
        failed = True
        try:
            metrics.update(evaluate(model, tok, task.evals, task.answers, cfg.eval, out_dir / PREDICTIONS,
                                    task.missing, cfg.dataset.max_new_tokens))
            record = segment.record()
            metrics.update({"segments": [record], "wall_s": record["seconds"]})
            write_json(out_dir / METRICS, metrics)
            tracker.log_eval(metrics, out_dir / PREDICTIONS)
            failed = False
        finally:
            tracker.finish(failed=failed)
    log.info(accuracy_table([(out_dir.name, metrics)]))
    log.info(f"eval directory: {out_dir}")
    return metrics
