"""Runs that cannot lie or collide: each fault through the real CLI on the tiny model, asserting
the exit code, the one-line message and that nothing was lost or overwritten (README: "Fault
matrix")."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from layerpeft.config import compose

EXE = str(Path(sys.executable).with_name("layerpeft"))
TINY = ["model=tiny", "dataset=synthetic_math", "logger=none", "eval.limit=4", "eval.max_new_tokens=8"]


def cli(*args, cwd=None, env=None):
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


def train(run: Path, *args, **kw):
    return cli("train", *TINY, f"hydra.run.dir={run}", *args, **kw)


def error_line(p) -> str:
    """The error a refused command printed: exactly one error line, no traceback (progress bars
    may share stderr)."""
    lines = [line for line in p.stderr.splitlines() if line.startswith("layerpeft ") and "error:" in line]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    return lines[0]


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and p.name != ".lock"}


# 1. a diverging run ------------------------------------------------------------------------------

def test_a_diverging_run_ends_diverged_with_no_adapter(tmp_path):
    run = tmp_path / "run"
    p = train(run, "method=lora", "train.lr=1e15", "train.warmup_steps=0", "train.max_steps=2")
    assert p.returncode == 2
    assert "training diverged: the gradient norm became inf at optimizer step 2" in error_line(p)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and "Lower train.lr" in metrics["error"]
    assert not (run / "adapter").exists() and not (run / "predictions.jsonl").exists()
    r = cli("report", str(run))
    assert "| diverged |" in r.stdout


# 2. run directories ------------------------------------------------------------------------------

def test_runs_started_together_get_their_own_directories(tmp_path):
    procs = [subprocess.Popen([EXE, "train", *TINY, "method=lora", "train.max_steps=1", f"train.lr={lr}"],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for lr in (1e-3, 2e-3)]
    assert all(p.wait(timeout=600) == 0 for p in procs)
    runs = sorted(tmp_path.glob("outputs/*/*/metrics.json"))
    assert len(runs) == 2
    assert sorted(json.loads(m.read_text())["train"]["lr"] for m in runs) == [1e-3, 2e-3]


def test_a_new_run_into_a_run_directory_is_refused_and_nothing_changes(tmp_path):
    run = tmp_path / "run"
    assert train(run, "method=lora", "train.max_steps=1").returncode == 0
    before = snapshot(run)
    p = train(run, "method=hlpt", "train.max_steps=1")
    assert p.returncode == 2 and "already holds a run: pass train.resume=true" in error_line(p)
    assert snapshot(run) == before  # .hydra/ included: refused before Hydra wrote there


def test_a_directory_locked_by_a_live_process_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(str(os.getpid()))  # this test process: alive
    p = train(run, "method=lora", "train.max_steps=1")
    assert p.returncode == 2 and f"is being written by process {os.getpid()}" in error_line(p)
    assert not (run / "metrics.json").exists() and (run / ".lock").read_text() == str(os.getpid())


# 3. resume compares the configuration ------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_lora_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    assert train(run, "method=lora", "train.max_steps=3").returncode == 0
    return run


@pytest.mark.parametrize("change,key", [("train.lr=0.01", "train.lr"), ("method=prefix", "method.name"),
                                        ("train.max_steps=5", "train.max_steps"), ("seed=7", "seed")])
def test_resume_with_other_settings_is_refused_before_anything_is_written(tmp_path, finished_lora_run, change, key):
    run = tmp_path / "run"
    shutil.copytree(finished_lora_run, run)  # each case refuses its own copy of one trained run
    before = snapshot(run)
    p = train(run, "method=lora", "train.max_steps=3", change, "train.resume=true")
    assert p.returncode == 2
    line = error_line(p)
    assert "train.resume=true" in line and f"{key}:" in line and "would mix two runs" in line
    assert snapshot(run) == before  # .hydra/overrides.yaml too: report labels read it


def test_resume_may_change_how_a_run_runs_and_records_it(tmp_path):
    run = tmp_path / "run"
    args = ["method=lora", "train.max_steps=4", "train.save_steps=2"]
    assert train(run, *args).returncode == 0
    kill_after_training(run)
    p = train(run, *args, "train.resume=true", "eval.batch_size=2", "train.save_steps=3")
    assert p.returncode == 0, p.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "ok"
    default_batch = compose("train", []).eval.batch_size
    assert metrics["segments"][-1]["resume_changed"] == {"eval.batch_size": [default_batch, 2],
                                                         "train.resume": [False, True], "train.save_steps": [2, 3]}


def kill_after_training(run: Path) -> None:
    """What a run killed after its last checkpoint leaves behind: config and checkpoints only."""
    for name in ("metrics.json", "predictions.jsonl", "adapter"):
        p = run / name
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


# 4. evaluating a run without an adapter ----------------------------------------------------------

def test_eval_of_a_run_without_an_adapter_is_refused(tmp_path):
    run = tmp_path / "run"
    assert train(run, "method=hlpt", "train.max_steps=1", "eval.enabled=false").returncode == 0
    shutil.rmtree(run / "adapter")
    out = tmp_path / "eval"
    p = cli("eval", f"run={run}", "eval.limit=2", f"hydra.run.dir={out}")
    assert p.returncode == 2 and "no adapter/ to evaluate" in error_line(p)
    assert not out.exists()


# 5. checkpoints ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    """A finished 6-step run (checkpoints at steps 2 and 4) and the same run's directory as a kill
    after step 5 would leave it."""
    root = tmp_path_factory.mktemp("ckpt")
    args = ["method=lora", "train.max_steps=6", "train.save_steps=2", "train.batch_size=4", "eval.enabled=false"]
    assert train(root / "full", *args).returncode == 0
    shutil.copytree(root / "full", root / "killed")
    kill_after_training(root / "killed")
    return root, args


def resume_copy(checkpointed, tmp_path, damage):
    root, args = checkpointed
    run = tmp_path / "run"
    shutil.copytree(root / "killed", run)
    damage(run / "checkpoints")
    return run, train(run, *args, "train.resume=true"), root / "full"


def same_adapter(a: Path, b: Path) -> bool:
    wa, wb = load_file(a / "adapter" / "adapter.safetensors"), load_file(b / "adapter" / "adapter.safetensors")
    return all(torch.allclose(wa[k], wb[k], atol=1e-6, rtol=1e-5) for k in wa)


def test_a_leftover_temporary_checkpoint_is_ignored_and_cleaned(checkpointed, tmp_path):
    run, p, full = resume_copy(checkpointed, tmp_path,
                               lambda c: shutil.copytree(c / "step_000004", c / "step_000005.tmp"))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "interrupted checkpoint save" in p.stdout and not (run / "checkpoints" / "step_000005.tmp").exists()
    assert "resumed from" in p.stdout and "step_000004" in p.stdout
    assert same_adapter(run, full)


def rewrite_adapter(ckpt: Path, change) -> None:
    """Change the adapter tensors of a checkpoint and keep its checksum valid (a NaN saved by a bug)."""
    f = ckpt / "adapter.safetensors"
    with safe_open(str(f), framework="pt") as h:
        meta = h.metadata()
    tensors = load_file(f)
    change(tensors)
    save_file(tensors, str(f), metadata=meta)
    state = json.loads((ckpt / "state.json").read_text())
    state["sha256"]["adapter.safetensors"] = hashlib.sha256(f.read_bytes()).hexdigest()
    (ckpt / "state.json").write_text(json.dumps(state))


@pytest.mark.parametrize("fault", ["corrupted", "truncated", "nan"])
def test_a_bad_newest_checkpoint_is_skipped_by_name_and_the_one_before_used(checkpointed, tmp_path, fault):
    def damage(c: Path):
        f = c / "step_000004" / "optimizer.safetensors"
        if fault == "corrupted":
            data = bytearray(f.read_bytes())
            data[-5] ^= 0xFF
            f.write_bytes(bytes(data))
        elif fault == "truncated":
            f.write_bytes(f.read_bytes()[:100])
        else:
            rewrite_adapter(c / "step_000004", lambda t: next(iter(t.values())).fill_(float("nan")))

    run, p, full = resume_copy(checkpointed, tmp_path, damage)
    assert p.returncode == 0, p.stderr[-2000:]
    reason = "non-finite values" if fault == "nan" else "checksum mismatch"
    assert "skipping checkpoint step_000004:" in p.stdout and reason in p.stdout
    assert "resumed from" in p.stdout and "step_000002 at step 2/6" in p.stdout
    assert same_adapter(run, full)  # the replay from step 2 ends where the uninterrupted run ended


def test_checkpoints_that_lost_their_state_refuse_rather_than_restart(checkpointed, tmp_path):
    run, p, _ = resume_copy(checkpointed, tmp_path,
                            lambda c: [f.unlink() for f in c.glob("step_*/state.json")])
    assert p.returncode == 2
    line = error_line(p)
    assert "no usable checkpoint" in line and "step_000004/state.json: missing" in line
    assert not (run / "metrics.json").exists()


# 6. numbers that are not valid -------------------------------------------------------------------

@pytest.mark.parametrize("override,message", [
    ("train.max_steps=0", "train.max_steps=0: must be a positive integer or null"),
    ("train.max_steps=-3", "train.max_steps=-3: must be a positive integer or null"),
    ("train.epochs=0", "train.epochs=0: must be a positive integer"),
    ("train.batch_size=0", "train.batch_size=0: must be a positive integer"),
    ("train.micro_batch_size=0", "train.micro_batch_size=0: must be a positive integer"),
    ("train.batch_size=-16", "train.batch_size=-16: must be a positive integer"),
    ("train.batch_size=10", "train.batch_size=10: must be a multiple of train.micro_batch_size=4"),
    ("train.save_steps=0", "train.save_steps=0: must be a positive integer"),
    ("train.lr=-1", "train.lr=-1: must be a number >= 0"),
    ("train.warmup_ratio=1.5", "train.warmup_ratio=1.5: must be a number >= 0 below 1.0"),
    ("train.precision=fp8", "train.precision='fp8': must be one of auto, fp32, bf16"),
    ("eval.max_new_tokens=0", "eval.max_new_tokens=0: must be a positive integer"),
    ("eval.limit=0", "eval.limit=0: must be a positive integer or null"),
    ("eval.batch_size=0", "eval.batch_size=0: must be a positive integer"),
    ("eval.num_beams=0", "eval.num_beams=0: must be a positive integer"),
    ("eval.mode=lenient", "eval.mode='lenient' is not one of strict, parity"),
    ("eval.mode=parity", "eval.max_new_tokens=8: eval.mode=parity decodes the reference scripts' 48 new tokens"),
    ("data.cutoff_len=0", "data.cutoff_len=0: must be a positive integer"),
    ("data.train_size=5000", "data.train_size=5000 exceeds the 600 examples available"),
    ("ist.enabled=true", "IST works on layer-based modules only; the plan has prefix"),
])
def test_bad_values_are_refused_before_anything_loads_or_is_written(tmp_path, override, message):
    run = tmp_path / "run"
    p = train(run, "method=hlpt", override)
    assert p.returncode == 2
    assert message in error_line(p)
    assert not run.exists()  # not even Hydra's files


@pytest.mark.parametrize("override", ["train.lr=-1", "eval.batch_size=0", "data.cutoff_len=0", "logger.name=tb"])
def test_a_bad_value_is_refused_before_torch_is_imported(tmp_path, override):
    """Config values are checked before the command imports torch and transformers (seconds), so a
    typo costs no wait."""
    probe = ("import sys\nfrom layerpeft.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
             "    print('exit', e.code, 'torch' in sys.modules, 'transformers' in sys.modules)\n")
    p = subprocess.run([sys.executable, "-c", probe, "train", *TINY, f"hydra.run.dir={tmp_path / 'run'}", override],
                       capture_output=True, text=True, timeout=120)
    assert p.stdout.split() == ["exit", "2", "False", "False"], p.stdout + p.stderr[-2000:]
    assert override.split("=")[0] in error_line(p)


def test_examples_with_nothing_to_train_on_are_left_out_or_refused(tmp_path):
    run = tmp_path / "run"
    p = train(run, "method=lora", "data.cutoff_len=8", "data.train_on_inputs=false", "train.max_steps=1")
    assert p.returncode == 2
    assert "none of the 600 training examples has a token to train on" in error_line(p)


def math_dir(root: Path, empty_answer: bool) -> Path:
    """A data directory in the math dataset's layout, one test answer empty if asked."""
    item = {"instruction": "Add 2 and 3.", "input": "", "output": "2 + 3 = 5. The answer is 5.", "answer": "5"}
    (root / "math").mkdir(parents=True)
    (root / "math" / "math_data.json").write_text(json.dumps([dict(item, instruction=f"Add {i} and 3.")
                                                               for i in range(40)]))
    for name in ("SVAMP", "AQuA", "AddSub", "MultiArith", "SingleEq", "gsm8k"):
        test = [dict(item, instruction="What is 7 + 1?", answer="" if empty_answer and name == "AddSub" else "8")]
        (root / "math" / f"{name}_test.json").write_text(json.dumps(test))
    return root


def test_an_evaluation_set_with_an_empty_gold_answer_is_refused(tmp_path):
    data = math_dir(tmp_path / "data", empty_answer=True)
    p = train(tmp_path / "run", "method=lora", "dataset=math", f"data.dir={data}", "data.val_size=0")
    assert p.returncode == 2
    assert f"{data}/math/AddSub_test.json: item 0 has an empty answer" in error_line(p)


# 7. elsewhere ------------------------------------------------------------------------------------

def test_prepare_data_never_damages_a_good_copy(tmp_path):
    good_src = math_dir(tmp_path / "good_src", empty_answer=False)
    data = tmp_path / "data"
    assert cli("prepare-data", "--from", str(good_src), "--to", str(data)).returncode == 0
    before = snapshot(data)
    bad = tmp_path / "bad"
    shutil.copytree(good_src, bad)
    (bad / "math" / "SVAMP_test.json").write_text("[{broken")
    p = cli("prepare-data", "--from", str(bad), "--to", str(data))
    assert p.returncode == 2 and f"{bad / 'math' / 'SVAMP_test.json'}: not readable as JSON" in error_line(p)
    assert snapshot(data) == before
    p = cli("prepare-data", "--from", str(data), "--to", str(data))
    assert p.returncode == 2 and "are the same directory" in error_line(p)
    assert snapshot(data) == before


def test_a_stored_config_is_read_literally(tmp_path):
    run = tmp_path / "run"
    assert train(run, "method=lora", "train.max_steps=1", "eval.enabled=false").returncode == 0
    cfg = (run / "config.yaml").read_text().replace("name: synthetic_math", "name: ${oc.env:SECRET_TOKEN}", 1)
    (run / "config.yaml").write_text(cfg)
    out = tmp_path / "eval"
    p = cli("eval", f"run={run}", f"hydra.run.dir={out}", env={**os.environ, "SECRET_TOKEN": "hunter2"})
    assert p.returncode == 2 and "key dataset.name holds an interpolation" in error_line(p)
    assert not out.exists() and "hunter2" not in p.stdout + p.stderr


def test_adapter_metadata_is_validated_before_anything_is_allocated(tmp_path):
    run = tmp_path / "run"
    assert train(run, "method=lora", "train.max_steps=1", "eval.enabled=false").returncode == 0
    f = run / "adapter" / "adapter.safetensors"
    with safe_open(str(f), framework="pt") as h:
        meta = h.metadata()
    plan = json.loads(meta["layerpeft_plan"])
    plan["options"]["lora"]["r"] = 10**9  # a 10^9 × 64 matrix per layer if it were built
    save_file(load_file(f), str(f), metadata={**meta, "layerpeft_plan": json.dumps(plan)})
    p = cli("eval", f"run={run}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert p.returncode == 2
    assert f"{f}: tensor layers.0.lora.A.q has shape [8, 64], its plan gives [1000000000, 64]" in error_line(p)
