"""W&B: the mode the environment asks for, one W&B run per layerpeft run across resumes, and what
a run logs — read back from the offline run files (W&B's record log, parsed here)."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

EXE = str(Path(sys.executable).with_name("layerpeft"))
TINY = ["model=tiny", "dataset=synthetic_math", "method=hlpt", "logger=wandb", "eval.limit=4", "eval.max_new_tokens=4"]
BLOCK, HEADER = 32768, 7  # W&B's record log: a 7-byte file header, then LevelDB-style 32 KiB blocks


def env(home: Path, **extra) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return {**clean, "HOME": str(home), **extra}  # no ~/.netrc login


def records(path: Path):
    """Every protobuf Record of an offline run's ``run-<id>.wandb`` file."""
    from wandb.proto import wandb_internal_pb2

    data, pos, pending = path.read_bytes(), HEADER, b""
    assert data[:4] == b":W&B"
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        pos += HEADER
        if kind == 0:
            pos += left - HEADER
            continue
        chunk, pos = data[pos : pos + length], pos + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # FULL, or LAST of a FIRST/MIDDLE…/LAST sequence
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def logged(run: Path) -> tuple[dict, dict, dict, set[str]]:
    """(history: key → values, summary, config, run ids) over all offline runs of a run directory."""
    history, summary, config, ids = {}, {}, {}, set()
    for f in sorted(run.glob("wandb/offline-run-*/run-*.wandb")):
        for r in records(f):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                ids.add(r.run.run_id)
            elif kind == "history":
                for item in r.history.item:
                    history.setdefault(item.key or "/".join(item.nested_key), []).append(json.loads(item.value_json))
            elif kind == "summary":
                for item in r.summary.update:
                    summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
            elif kind == "config":
                for item in r.config.update:
                    config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return history, summary, config, ids


def test_disabled_mode_from_the_environment_creates_nothing(tmp_path):
    run = tmp_path / "run"
    p = subprocess.run([EXE, "train", *TINY, "train.max_steps=1", f"hydra.run.dir={run}"], capture_output=True,
                       text=True, timeout=600, env=env(tmp_path, WANDB_MODE="disabled"))
    assert p.returncode == 0, p.stderr[-2000:]
    assert not list(run.rglob("wandb*")) and not (tmp_path / "wandb").exists()


def test_offline_run_logs_history_summary_plan_and_resumes_as_one_run(tmp_path):
    run = tmp_path / "run"
    args = [EXE, "train", *TINY, "train.max_steps=30", "train.save_steps=3", "train.batch_size=4",
            "train.micro_batch_size=4", f"hydra.run.dir={run}"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(tmp_path))
    deadline = time.time() + 300
    while not list(run.glob("checkpoints/step_*/state.json")):
        assert proc.poll() is None and time.time() < deadline, "ended before its first checkpoint"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    p = subprocess.run([*args, "train.resume=true"], capture_output=True, text=True, timeout=600, env=env(tmp_path))
    assert p.returncode == 0, p.stderr[-2000:]
    history, summary, config, ids = logged(run)
    assert len(list(run.glob("wandb/offline-run-*"))) == 2 and len(ids) == 1  # two processes, one W&B run
    assert ids == {(run / "wandb_id").read_text()}
    assert len(history["train/grad_norm"]) >= 30 - 3 and all(v > 0 for v in history["train/grad_norm"])
    assert {"train/loss", "train/lr", "train/tokens_per_s", "val/loss", "eval/average",
            "eval/synthetic/accuracy"} <= set(history)
    assert summary["trainable_params"] == json.loads((run / "metrics.json").read_text())["trainable_params"]
    assert summary["peak_memory_mb"] > 0
    # the plan as numbers a chart can use: 4 tiny layers, HLPT 3:1
    plan = config["plan"]["value"] if "value" in config.get("plan", {}) else config["plan"]
    assert plan["bottom_layers"] == 3 and plan["bottom_share"] == 0.75 and plan["segment_layers"] == [3, 1]
