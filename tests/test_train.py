"""`layerpeft train` end to end on the tiny model: run dir, resume, NaN, peft export, W&B."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from layerpeft import load_run

EXE = str(Path(sys.executable).with_name("layerpeft"))
TINY = ["model=tiny", "dataset=synthetic_math", "logger=none", "eval.limit=8", "eval.max_new_tokens=16"]


def train_cli(run_dir: Path, *args: str, check: bool = True, wait: bool = True):
    cmd = [EXE, "train", *TINY, f"hydra.run.dir={run_dir}", *args]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def test_run_directory_contents(tmp_path):
    run = tmp_path / "run"
    p = train_cli(run, "method=hlpt", "train.max_steps=3")
    assert "| run | method | synthetic | Avg. |" in p.stdout  # the accuracy table ends the run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["datasets"]["synthetic"]["n"] == 8
    assert set(metrics["train"]) >= {"steps", "final_loss", "tokens_per_s", "peak_memory_mb", "trainable_params", "wall_s"}
    assert metrics["train"]["steps"] == 3 and metrics["train"]["lr"] == 3e-3
    # precision=auto is bf16 autocast on a CPU with bf16 instructions, fp32 on one without; the run
    # records what it used and why
    flags = Path("/proc/cpuinfo").read_text()
    native = "avx512_bf16" in flags.split() or "amx_bf16" in flags.split()
    assert (metrics["train"]["device"], metrics["train"]["precision"]) == ("cpu", "bf16" if native else "fp32")
    assert ("natively" if native else "no native bf16") in metrics["train"]["precision_reason"]
    # the protocol: clipped at 1.0 (as the HF Trainer the papers used), the norm recorded per step
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["max_grad_norm"] == 1.0
    assert [s for s, _ in metrics["train"]["grad_norm_history"]] == [1, 2, 3]
    assert all(n > 0 for _, n in metrics["train"]["grad_norm_history"])
    # provenance: code version, libraries, machine, base weights; one segment for one process
    prov = metrics["provenance"]
    assert len(prov["commit"]) == 40 and isinstance(prov["dirty"], bool)
    assert prov["versions"]["torch"] == torch.__version__ and prov["versions"]["transformers"]
    assert prov["machine"]["native_bf16"] is native and prov["machine"]["cpu"]
    # under bf16 autocast the frozen base is held in bf16
    # (the tiny model is the random source: its seed and a note that the weights are random)
    assert prov["base_weights"] == {"model": "tiny", "source": "random", "dtype": "bfloat16" if native else "float32",
                                    "seed": 0, "note": "random weights in the model's architecture"}
    (seg,) = metrics["segments"]
    assert seg["phases"] == ["train", "evaluate"] and metrics["wall_s"] == pytest.approx(seg["seconds"])
    # 600 synthetic problems, batches of 16: 38 steps an epoch; validation at the run's end
    assert metrics["train"]["steps_per_epoch"] == 38
    ((epoch, val_loss),) = metrics["train"]["val_loss_history"]
    assert epoch == pytest.approx(3 / 38) and 0 < val_loss < 10
    plan = json.loads((run / "plan.json").read_text())
    assert plan["layers"] == [["lora_ffn"]] * 3 + [["prefix"]]
    assert sum(plan["layer_params"]) == metrics["trainable_params"]
    eff = metrics["efficiency"]  # the survey's Guideline 2 figures
    assert eff["adapter_bytes"] == (run / "adapter" / "adapter.safetensors").stat().st_size
    assert eff["changed_params"] == eff["trainable_params"] == metrics["trainable_params"]
    assert eff["trainable_pct"] == pytest.approx(100 * metrics["trainable_params"] / metrics["total_params"])
    assert eff["train_tokens_per_s"] > 0 and eff["inference_tokens_per_s"] > 0 and eff["peak_memory_mb"] > 0
    rep = subprocess.run([EXE, "report", str(run), "--efficiency"], capture_output=True, text=True, timeout=120)
    assert rep.returncode == 0 and "| trainable params | trainable % | changed % | peak MB |" in rep.stdout
    assert (run / "config.yaml").is_file() and (run / "adapter" / "adapter.safetensors").is_file()
    assert len((run / "predictions.jsonl").read_text().splitlines()) == 8
    assert not [p for p in run.rglob("*") if p.suffix in (".bin", ".pt", ".pkl", ".pth")]
    # `layerpeft eval run=…` scores the finished run exactly as training's own evaluation did
    ev = tmp_path / "eval"
    e = subprocess.run([EXE, "eval", f"run={run}", "eval.limit=8", "eval.max_new_tokens=16", f"hydra.run.dir={ev}"],
                       capture_output=True, text=True, timeout=300)
    assert e.returncode == 0, e.stderr[-3000:]
    assert json.loads((ev / "metrics.json").read_text())["datasets"] == metrics["datasets"]
    assert (ev / "predictions.jsonl").read_text() == (run / "predictions.jsonl").read_text()
    # load_run gives back the trained model
    model, tok = load_run(run)
    ids = torch.tensor([[5, 6, 7, 8]])
    assert model(input_ids=ids).logits.shape == (1, 4, 259)
    assert sum(p.numel() for p in model.layerpeft.parameters()) == metrics["trainable_params"]


def test_seed_fixes_the_starting_adapter(tmp_path):
    """At lr 0 a run's adapter is its initialisation: `seed` must decide it."""
    def adapter(name, seed):
        train_cli(tmp_path / name, "method=hlpt", f"seed={seed}", "train.lr=0", "train.max_steps=1", "eval.enabled=false")
        return load_file(tmp_path / name / "adapter" / "adapter.safetensors")

    a, again, other = adapter("a", 3), adapter("again", 3), adapter("other", 4)
    assert a.keys() == again.keys() == other.keys()
    assert all(torch.equal(a[k], again[k]) for k in a)
    assert any(not torch.equal(a[k], other[k]) for k in a)


def test_kill_after_first_checkpoint_then_resume_matches_uninterrupted(tmp_path):
    args = ["method=hlpt", "train.max_steps=40", "train.save_steps=4", "eval.enabled=false",
            "train.batch_size=8", "train.micro_batch_size=4"]
    full = tmp_path / "full"
    train_cli(full, *args)
    killed = tmp_path / "killed"
    proc = train_cli(killed, *args, wait=False)
    deadline = time.time() + 300
    while not list((killed / "checkpoints").glob("step_*/state.json")):
        assert proc.poll() is None, "run ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists()
    train_cli(killed, *args, "train.resume=true")
    resumed = json.loads((killed / "metrics.json").read_text())
    # two processes, both counted: the killed one up to its last checkpoint
    assert [s["phases"] for s in resumed["segments"]] == [["train"], ["train"]]
    assert resumed["wall_s"] == pytest.approx(sum(s["seconds"] for s in resumed["segments"]))
    a = json.loads((full / "metrics.json").read_text())["train"]
    b = resumed["train"]
    assert b["steps"] == a["steps"] == 40
    assert b["final_loss"] == pytest.approx(a["final_loss"], rel=1e-6)
    wa = load_file(full / "adapter" / "adapter.safetensors")
    wb = load_file(killed / "adapter" / "adapter.safetensors")
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-6, rtol=1e-5)


def test_run_stopped_while_evaluating_keeps_its_training_and_resume_only_evaluates(tmp_path):
    args = ["method=hlpt", "train.max_steps=3", "eval.limit=100", "eval.max_new_tokens=48"]
    full = tmp_path / "full"
    train_cli(full, *args)
    cut = tmp_path / "cut"
    proc = train_cli(cut, *args, wait=False)
    deadline = time.time() + 300
    while not ((cut / "metrics.json").is_file() and '"evaluating"' in (cut / "metrics.json").read_text()):
        assert proc.poll() is None and time.time() < deadline, "run ended before it started evaluating"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # stopped while evaluating
    proc.wait()
    stopped = json.loads((cut / "metrics.json").read_text())
    assert stopped["status"] == "evaluating" and "datasets" not in stopped
    assert stopped["train"]["steps"] == 3 and len(stopped["train"]["loss_history"]) == 3
    adapter = cut / "adapter" / "adapter.safetensors"
    saved = adapter.stat().st_mtime_ns
    p = train_cli(cut, *args, "train.resume=true")
    assert "training had finished, evaluating its adapter" in p.stdout
    done = json.loads((cut / "metrics.json").read_text())
    assert done["status"] == "ok" and done["train"] == stopped["train"]  # not trained again
    assert [s["phases"] for s in done["segments"]] == [["train"], ["evaluate"]]
    assert done["wall_s"] == pytest.approx(sum(s["seconds"] for s in done["segments"]))
    assert adapter.stat().st_mtime_ns == saved
    assert done["datasets"] == json.loads((full / "metrics.json").read_text())["datasets"]
    assert done["efficiency"]["inference_tokens_per_s"] > 0


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path):
    """A parameter turned NaN after step 3 (through the tracker hook) makes step 4's loss NaN."""
    from layerpeft.commands.plan import plan_for
    from layerpeft.config import compose
    from layerpeft.data.synthetic import synthetic_math
    from layerpeft.models.loading import load_model
    from layerpeft.peft_model import apply_plan
    from layerpeft.tracking import Tracker
    from layerpeft.train.loop import TrainingDiverged, pick_device, train

    cfg = compose("train", [*TINY, "method=lora", "train.max_steps=10", "train.save_steps=2"])
    model, tok = load_model(cfg.model)
    adapters = apply_plan(model, plan_for(cfg))

    class Poison(Tracker):
        def log(self, values, step=None):
            if step == 3:
                with torch.no_grad():
                    next(adapters.parameters()).fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match=r"loss became nan at optimizer step 4.*last verified checkpoint: .*step_000002"):
        train(model, tok, synthetic_math(64, 0), cfg, tmp_path, pick_device(cfg.train), Poison())
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert kept == ["step_000002"]


def test_lora_run_loads_in_hf_peft(tmp_path):
    peft = pytest.importorskip("peft")
    run = tmp_path / "run"
    train_cli(run, "method=lora", "train.max_steps=3", "train.lr=1e-2", "train.warmup_steps=0")
    model, _ = load_run(run)
    from layerpeft.models.loading import load_model
    from layerpeft.config import compose

    base, _ = load_model(compose("train", ["model=tiny"]).model)
    pm = peft.PeftModel.from_pretrained(base, run / "adapter" / "peft").eval()
    ids = torch.randint(3, 259, (2, 12))
    with torch.no_grad():
        ours, theirs = model(input_ids=ids).logits, pm(input_ids=ids).logits
    assert not torch.allclose(ours, load_model(compose("train", ["model=tiny"]).model)[0](input_ids=ids).logits)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["hlpt", "para"])
def test_a_loaded_run_is_causal_in_a_plain_forward(tmp_path, method):
    """What lm-evaluation-harness or a notebook does with load_run(): model(ids), no prompt mask."""
    run = tmp_path / method
    train_cli(run, f"method={method}", "train.max_steps=3", "train.lr=0.05", "train.warmup_steps=0",
              "eval.enabled=false")
    model, _ = load_run(run)
    ids = torch.randint(3, 259, (2, 16))
    changed = ids.clone()
    changed[:, 9] = (changed[:, 9] + 11) % 259
    with torch.no_grad():
        before, after = model(input_ids=ids).logits, model(input_ids=changed).logits
    torch.testing.assert_close(after[:, :9], before[:, :9], atol=1e-6, rtol=0)
    assert not torch.allclose(after[:, 9:], before[:, 9:])


def test_warm_up_as_a_share_of_the_steps():
    """PARA's recipe warms up over 6 % of the steps (rounded up, as the HF Trainer does);
    train.warmup_steps still wins, and other methods keep LLM-Adapters' 100 steps."""
    from layerpeft.config import compose
    from layerpeft.train.loop import warmup_steps

    para = compose("train", ["method=para"])
    assert warmup_steps(para, 189) == 12 and warmup_steps(para, 1000) == 60
    assert warmup_steps(compose("train", ["method=para", "train.warmup_steps=5"]), 189) == 5
    assert warmup_steps(compose("train", ["method=hlpt", "train.warmup_ratio=0.1"]), 189) == 19
    assert warmup_steps(compose("train", ["method=lora"]), 189) == 100
