"""Benchmarks (speed and memory are measured here, never in tests). Last line: one JSON object.

    python scripts/bench.py train --model smollm2_135m --method lora --baseline peft
        layerpeft's LoRA vs HF peft's, same LoRA config, batch, sequence length, optimizer and
        dtype; the two alternate in separate processes (so neither inherits the other's
        allocator state or peak RSS) and the median of the repeats is reported.
    python scripts/bench.py mfu --device cuda --dtype bf16 --methods lora,hlpt
        model FLOPs utilisation of LoRA and HLPT training on a LLaMA-7B-shaped model with random
        weights (--source random, no download): tokens/s at batch 16 of 256 tokens, 4N FLOPs per
        token, against --peak-tflops (989, the H200's dense bf16, by default on cuda).
    python scripts/bench.py decode --model smollm2_135m --methods para,lora,ia3
        PARA paper Table 4 protocol: a ~274-token prompt, 32 new tokens, beam sizes 1 and 3,
        adapters not merged, repeated runs; each method in its own process (peak RSS per method).
    python scripts/bench.py ist --model smollm2_135m --method lora
        time per optimizer step (IST's probes included: 10 timed steps hold one importance
        update) and peak memory of the steps (RSS growth over the loaded model), with and
        without IST, same batch, alternating processes. A step is the training loop's: batch 16
        accumulated from micro-batches of 4, the probes on a fresh batch of 16 in eval mode.
    python scripts/bench.py efficiency --model smollm2_135m --out outputs/efficiency
        the PEFT survey's efficiency table: `layerpeft train +experiment=efficiency` (a few
        optimizer steps, a few eval problems) for each of its methods, each in its own process
        (so peak memory is per method), then `layerpeft report --efficiency` relative to full
        fine-tuning. The score after so few steps is not an accuracy comparison.
    python scripts/bench.py eval --model smollm2_135m --n 8 --max-new-tokens 32
        layerpeft's evaluation (batched, left-padded, greedy, KV cache) vs the LLM-Adapters
        protocol (one prompt at a time, 4 beams, no KV cache) on the same prompts.
    python scripts/bench.py pipeline --model smollm2_135m --method lora --data-dir ../shared/data
        end to end against what a user would otherwise run, each part in its own process, same
        data, precision and hyper-parameters: training on the first K examples of the math-1000
        sample (layerpeft: packed micro-batches, chunked loss; HF peft + Trainer with dynamic
        padding), then greedy answers to the first N holdout questions (layerpeft: continuous
        batching; peft's model with ``generate``, left-padded batches of the same size sorted by
        length, stopping at EOS or a template marker), both with the adapter layerpeft trained
        or, with ``--eval-adapter RUN``, a finished LoRA run's: after the bench's few steps an
        adapter still answers like the base model, at length, while a trained one answers at
        the varied lengths users' adapters do, which is where continuous batching gains. Last
        line: train_ratio and eval_ratio (ours over theirs, tokens/s and questions/s), speedup
        (their total time over ours) and answers_identical (share of identical answers).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch


def _load(model_name: str, device: str = "cpu", dtype: torch.dtype = torch.float32, source: str | None = None):
    from layerpeft.config import compose
    from layerpeft.models.loading import load_model

    cfg = compose("train", [f"model={model_name}"] + ([f"model.source={source}"] if source else []))
    return cfg, *load_model(cfg.model, dtype=dtype, device=device)


def train_worker(args) -> dict:
    """One measurement in this process: warm-up step, then timed optimizer steps."""
    torch.manual_seed(0)
    cuda = args.device == "cuda"
    autocast = args.dtype == "bf16"
    # On CUDA the frozen base is stored in bf16 under bf16 autocast, as the training loop does;
    # both implementations keep their adapter weights in fp32 (peft upcasts them by default).
    cfg, model, _ = _load(args.model, args.device, torch.bfloat16 if cuda and autocast else torch.float32,
                          getattr(args, "source", None))
    # the base's matmul weights (lm_head included, embedding lookups not): 2N FLOPs per token forward
    matmul_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    ist = None
    if args.impl == "ours":
        from layerpeft import apply_plan, build_plan
        from layerpeft.config import compose

        method = compose("train", [f"method={args.method}"]).method
        adapters = apply_plan(model, build_plan(method, model.config.num_hidden_layers))
        if args.ist:
            from layerpeft.train.ist import IST

            ist = IST(adapters, compose("train", []).ist, mu=10.0, num_examples=1000)
    else:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                                 target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    model.train()
    model.to(args.device)  # the adapters were created on the CPU
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-4)
    ids = torch.randint(10, model.config.vocab_size, (args.batch, args.seq_len), device=args.device)
    micro = ids.split(args.micro_batch or args.batch)

    def loss_of(batch):
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=autocast):
            return model(input_ids=batch, labels=batch).loss

    count = [0]

    @torch.inference_mode()
    def probe(indices):  # IST's probe: a fresh batch of len(indices) sequences, eval mode
        model.eval()
        fresh = torch.randint(10, model.config.vocab_size, (len(indices), args.seq_len), device=args.device)
        losses = [loss_of(b).item() for b in fresh.split(args.micro_batch or args.batch)]
        model.train()
        return sum(losses) / len(losses)

    def step():
        """One optimizer step as the training loop takes it: IST's probes (every interval, on a
        fresh batch of 16) and selection, then the accumulated micro-batches."""
        if ist is not None:
            ist.probe(count[0], probe)
            ist.select()
        count[0] += 1
        for batch in micro:
            (loss_of(batch) / len(micro)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    before_mb = _rss_mb()
    if cuda:  # GPU memory: what the allocator held at its peak over the steps (model included)
        torch.cuda.synchronize()
        before_mb = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    step()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"tokens_per_s": args.steps * ids.numel() / dt, "step_s": dt / args.steps,
            "peak_mb": peak, "step_peak_mb": peak - before_mb,
            "trainable": sum(p.numel() for p in params), "matmul_params": matmul_params}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _worker(args, impl: str, ist: bool) -> dict:
    cmd = [sys.executable, __file__, "_train_worker", "--impl", impl, "--model", args.model,
           "--method", args.method, "--steps", str(args.steps), "--batch", str(args.batch),
           "--micro-batch", str(args.micro_batch), "--seq-len", str(args.seq_len),
           "--dtype", args.dtype, "--device", args.device] + (["--ist"] if ist else []) + \
        (["--source", args.source] if getattr(args, "source", None) else [])
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])


def bench_ist(args) -> dict:
    runs: dict[str, list[dict]] = {"plain": [], "ist": []}
    for _ in range(args.repeats):
        for name in runs:
            runs[name].append(_worker(args, "ours", name == "ist"))
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("step_s", "step_peak_mb", "peak_mb")}
           for k, v in runs.items()}
    return {"bench": "ist", "model": args.model, "method": args.method, "batch": args.batch,
            "micro_batch": args.micro_batch,
            "seq_len": args.seq_len, "steps": args.steps, "dtype": args.dtype, "device": args.device,
            "repeats": args.repeats,
            "plain": med["plain"], "ist": med["ist"],
            "mem_ratio": med["ist"]["step_peak_mb"] / med["plain"]["step_peak_mb"],
            "time_ratio": med["ist"]["step_s"] / med["plain"]["step_s"]}


def bench_train(args) -> dict:
    results: dict[str, list[dict]] = {"ours": [], args.baseline: []}
    for _ in range(args.repeats):
        for impl in ("ours", args.baseline):
            results[impl].append(_worker(args, impl, False))
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("tokens_per_s", "peak_mb")} for k, v in results.items()}
    ours, base = med["ours"], med[args.baseline]
    return {"bench": "train", "model": args.model, "method": args.method, "baseline": args.baseline,
            "batch": args.batch, "seq_len": args.seq_len, "steps": args.steps, "dtype": args.dtype, "device": args.device,
            "repeats": args.repeats, "trainable_ours": results["ours"][0]["trainable"],
            "trainable_baseline": results[args.baseline][0]["trainable"],
            "ours_tokens_per_s": ours["tokens_per_s"], "baseline_tokens_per_s": base["tokens_per_s"],
            "ratio": ours["tokens_per_s"] / base["tokens_per_s"],
            "ours_peak_mb": ours["peak_mb"], "baseline_peak_mb": base["peak_mb"],
            "mem_ratio": ours["peak_mb"] / base["peak_mb"]}


def bench_mfu(args) -> dict:
    """Model FLOPs utilisation of adapter training: each method in its own process, at 4N FLOPs
    per token (N: the frozen base's matmul weights; forward 2N, backward to the activations 2N,
    no weight gradients for the base; adapters and attention scores not counted, so the figure
    is a slight underestimate) against the accelerator's dense peak."""
    peak = args.peak_tflops if args.peak_tflops is not None else (989.0 if args.device == "cuda" else None)
    rows = {}
    for method in args.methods.split(","):
        args.method = method
        runs = [_worker(args, "ours", False) for _ in range(args.repeats)]
        r = min(runs, key=lambda x: x["step_s"])  # the fastest repeat: MFU is a capability figure
        achieved = 4 * r["matmul_params"] * r["tokens_per_s"] / 1e12
        rows[method] = {"tokens_per_s": r["tokens_per_s"], "step_s": r["step_s"], "peak_mb": r["peak_mb"],
                        "trainable": r["trainable"], "achieved_tflops": achieved,
                        "mfu": achieved / peak if peak else None}
    return {"bench": "mfu", "model": args.model, "source": args.source, "device": args.device,
            "dtype": args.dtype, "batch": args.batch, "micro_batch": args.micro_batch, "seq_len": args.seq_len,
            "steps": args.steps, "repeats": args.repeats, "matmul_params": r["matmul_params"],
            "peak_tflops": peak, "methods": rows}


def decode_worker(args) -> dict:
    """Decoding speed of one method in this process (first run is a warm-up)."""
    from layerpeft import apply_plan, build_plan
    from layerpeft.config import compose
    from layerpeft.data.prompts import prompt_text
    from layerpeft.data.synthetic import synthetic_math

    torch.manual_seed(0)
    _, model, tok = _load(args.model)
    method = compose("train", [f"method={args.method}"]).method
    adapters = apply_plan(model, build_plan(method, model.config.num_hidden_layers))
    with torch.no_grad():  # trained-looking adapters: nothing may short-cut a zero update
        for p in adapters.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    text = " ".join(ex["instruction"] for ex in synthetic_math(40, seed=1))
    ids = tok(prompt_text(text))["input_ids"][: args.prompt_tokens]
    enc = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
    out = {}
    for beams in (1, 3):
        times = []
        for _ in range(args.repeats + 1):
            t0 = time.perf_counter()
            with torch.no_grad():
                model.generate(**enc, num_beams=beams, do_sample=False, max_new_tokens=args.new_tokens,
                               min_new_tokens=args.new_tokens, pad_token_id=tok.pad_token_id)
            times.append(time.perf_counter() - t0)
        out[f"beam{beams}_tokens_per_s"] = args.new_tokens / statistics.median(times[1:])
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["prompt_tokens"] = len(ids)
    return out


def bench_decode(args) -> dict:
    res = {}
    for method in args.methods.split(","):
        cmd = [sys.executable, __file__, "_decode_worker", "--model", args.model, "--method", method,
               "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens),
               "--repeats", str(args.repeats)]
        res[method] = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
    out = {"bench": "decode", "model": args.model, "new_tokens": args.new_tokens, "repeats": args.repeats, "methods": res}
    if "para" in res and "lora" in res:
        out["para_over_lora"] = res["para"]["beam1_tokens_per_s"] / res["lora"]["beam1_tokens_per_s"]
        out["para_over_lora_beam3"] = res["para"]["beam3_tokens_per_s"] / res["lora"]["beam3_tokens_per_s"]
    return out


def bench_eval(args) -> dict:
    from layerpeft.data.prompts import prompt_text
    from layerpeft.data.synthetic import synthetic_math
    from layerpeft.eval.generate import generate

    _, model, tok = _load(args.model)
    prompts = [prompt_text(ex["instruction"]) for ex in synthetic_math(args.n, seed=7)]
    t0 = time.perf_counter()
    generate(model, tok, prompts, batch_size=args.batch, max_new_tokens=args.max_new_tokens)
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        for p in prompts:  # LLM-Adapters' evaluate.py: batch 1, 4 beams, no KV cache
            enc = tok(p, return_tensors="pt")
            model.generate(**enc, num_beams=4, max_new_tokens=args.max_new_tokens, use_cache=False,
                           do_sample=False, pad_token_id=tok.pad_token_id)
    ref = time.perf_counter() - t0
    return {"bench": "eval", "model": args.model, "n": args.n, "max_new_tokens": args.max_new_tokens,
            "batch": args.batch, "ours_s": ours, "reference_s": ref, "speedup": ref / ours}


def _pipeline_setup(args):
    """The run's config (the method's hyper-parameters, math-1000 sample, this precision), the
    first K training examples of the sample and the first N holdout questions (sets in order)."""
    from layerpeft.config import compose
    from layerpeft.data.tasks import load_task

    cfg = compose("train", [f"model={args.model}", f"method={args.method}", "dataset=math", f"data.dir={args.data_dir}",
                            "data.train_size=1000", "data.val_size=0", f"train.precision={args.precision}",
                            "train.epochs=1", "logger=none"])
    task = load_task(cfg.dataset, cfg.data)
    questions = [ex for items in task.evals.values() for ex in items][: args.eval_questions]
    return cfg, task.train[: args.train_examples], questions


def pipeline_worker(args) -> dict:
    """One part (train or eval) of one implementation (ours or HF peft + Trainer / generate)."""
    import tempfile
    from pathlib import Path

    from layerpeft.data.prompts import prompt_text, tokenize_example
    from layerpeft.models.loading import load_model
    from layerpeft.train.loop import pick_device

    cfg, train_examples, questions = _pipeline_setup(args)
    dev = pick_device(cfg.train)
    torch.manual_seed(0)
    model, tok = load_model(cfg.model, dtype=dev.model_dtype)
    out = Path(args.adapter_dir)
    if args.part == "train":
        data = [tokenize_example(tok, ex, cfg.data.cutoff_len, cfg.data.train_on_inputs) for ex in train_examples]
        tokens = sum(len(d["input_ids"]) for d in data)
        if args.impl == "ours":
            from layerpeft import apply_plan, save_adapter
            from layerpeft.commands.plan import plan_for
            from layerpeft.tracking import Tracker
            from layerpeft.train.loop import train

            apply_plan(model, plan_for(cfg), seed=int(cfg.seed))
            with tempfile.TemporaryDirectory() as run_dir:
                t0 = time.perf_counter()
                result = train(model, tok, train_examples, cfg, Path(run_dir), dev, Tracker())
                seconds = time.perf_counter() - t0
            save_adapter(model, out)
            steps = result["steps"]
        else:
            import datasets
            from peft import LoraConfig, get_peft_model
            from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

            o = cfg.method.options.lora
            model = get_peft_model(model, LoraConfig(r=o.r, lora_alpha=o.alpha, lora_dropout=o.dropout,
                                                     target_modules=[f"{t}_proj" for t in o.targets],
                                                     task_type="CAUSAL_LM"))
            rows = datasets.Dataset.from_list([{"input_ids": d["input_ids"], "labels": d["labels"]} for d in data])
            with tempfile.TemporaryDirectory() as tmp:
                trainer = Trainer(model=model, train_dataset=rows,
                                  data_collator=DataCollatorForSeq2Seq(tok, padding=True, return_tensors="pt"),
                                  args=TrainingArguments(
                                      output_dir=tmp, per_device_train_batch_size=cfg.train.micro_batch_size,
                                      gradient_accumulation_steps=cfg.train.batch_size // cfg.train.micro_batch_size,
                                      learning_rate=float(cfg.method.lr), num_train_epochs=1, warmup_steps=100,
                                      lr_scheduler_type="linear", weight_decay=0.0, max_grad_norm=1.0,
                                      bf16=dev.autocast is not None, use_cpu=dev.device.type == "cpu",
                                      save_strategy="no", report_to=[], logging_strategy="no", seed=int(cfg.seed),
                                      remove_unused_columns=False, disable_tqdm=True))
                t0 = time.perf_counter()
                trainer.train()
                seconds = time.perf_counter() - t0
            steps = trainer.state.global_step
        return {"part": "train", "impl": args.impl, "seconds": seconds, "tokens": tokens, "steps": steps,
                "tokens_per_s": tokens / seconds}
    # eval: both decode greedily with the adapter ours trained, stopping at EOS or a template
    # marker, in batches of the same size; the answers are compared after the strict cut
    from layerpeft.data.prompts import STOP_MARKERS
    from layerpeft.eval.protocol import cut_at_markers
    from layerpeft.peft_model import load_adapter

    prompts = sorted((prompt_text(ex["instruction"], ex.get("input", "")) for ex in questions), key=len)
    new_tokens = int(cfg.dataset.max_new_tokens)
    if args.eval_adapter:
        out = Path(args.eval_adapter) / "adapter"
    if args.impl == "ours":
        from layerpeft.eval.generate import generate

        load_adapter(model, out)
        model.eval()
        t0 = time.perf_counter()
        rows = generate(model, tok, prompts, args.eval_batch, new_tokens)
        seconds = time.perf_counter() - t0
        answers = [cut_at_markers(tok.decode(new, skip_special_tokens=True)) for _, new in rows]
    else:
        from layerpeft.export import export_peft
        from peft import PeftModel

        with tempfile.TemporaryDirectory() as peft_dir:
            fresh, _ = load_model(cfg.model, dtype=dev.model_dtype)
            load_adapter(fresh, out)
            export_peft(fresh, Path(peft_dir), None)
            model = PeftModel.from_pretrained(model, peft_dir).eval()
        tok.padding_side = "left"
        order = list(range(len(prompts)))  # sorted by length, as a careful user would batch
        answers = [""] * len(prompts)
        t0 = time.perf_counter()
        with torch.no_grad():
            for start in range(0, len(order), args.eval_batch):
                idx = order[start : start + args.eval_batch]
                enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True)
                gen = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False, stop_strings=list(STOP_MARKERS),
                                     tokenizer=tok, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
                for i, row in zip(idx, tok.batch_decode(gen[:, enc.input_ids.shape[1]:], skip_special_tokens=True)):
                    answers[i] = cut_at_markers(row)
        seconds = time.perf_counter() - t0
    return {"part": "eval", "impl": args.impl, "seconds": seconds, "questions": len(prompts),
            "questions_per_s": len(prompts) / seconds, "answers": answers}


def bench_pipeline(args) -> dict:
    """Ours against what a user would otherwise run, each part in its own process."""
    import tempfile
    from pathlib import Path

    if args.eval_adapter:
        from layerpeft.peft_model import ADAPTER_FILE
        from layerpeft.rundir import ADAPTER_DIR, CONFIG, load_stored_config

        run = Path(args.eval_adapter)
        if not (run / ADAPTER_DIR / ADAPTER_FILE).is_file() or not (run / CONFIG).is_file():
            sys.exit(f"bench: --eval-adapter {run}: not a finished layerpeft run (no {ADAPTER_DIR}/{ADAPTER_FILE})")
        stored = load_stored_config(run / CONFIG)
        if (stored.method.name, stored.model.name) != (args.method, args.model):
            sys.exit(f"bench: --eval-adapter {run}: a {stored.method.name} run on {stored.model.name}, "
                     f"the bench compares {args.method} on {args.model}")
    with tempfile.TemporaryDirectory() as adapter_dir:
        def part(name, impl):
            cmd = [sys.executable, __file__, "_pipeline_worker", "--part", name, "--impl", impl,
                   "--adapter-dir", adapter_dir] + [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                                                    if k in ("model", "method", "data_dir", "precision", "train_examples",
                                                             "eval_questions", "eval_batch", "eval_adapter")
                                                    and v is not None]
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode:
                raise RuntimeError(f"{name}/{impl} failed:\n{p.stderr[-3000:]}")
            return json.loads(p.stdout.strip().splitlines()[-1])

        train_ours, train_hf = part("train", "ours"), part("train", "hf")
        eval_ours, eval_hf = part("eval", "ours"), part("eval", "hf")
    same = sum(a == b for a, b in zip(eval_ours["answers"], eval_hf["answers"])) / len(eval_ours["answers"])
    train_ratio = train_ours["tokens_per_s"] / train_hf["tokens_per_s"]
    eval_ratio = eval_ours["questions_per_s"] / eval_hf["questions_per_s"]
    total_ours, total_hf = train_ours["seconds"] + eval_ours["seconds"], train_hf["seconds"] + eval_hf["seconds"]
    print(json.dumps({"bench": "pipeline", "model": args.model, "method": args.method, "precision": args.precision,
                      "train_examples": args.train_examples, "eval_questions": args.eval_questions,
                      "eval_batch": args.eval_batch, "eval_adapter": args.eval_adapter,
                      "train_ours": train_ours, "train_hf": train_hf,
                      "eval_ours_s": eval_ours["seconds"], "eval_hf_s": eval_hf["seconds"]}), file=sys.stderr)
    return {"train_ratio": train_ratio, "eval_ratio": eval_ratio, "speedup": total_hf / total_ours,
            "answers_identical": same}


def bench_efficiency(args) -> dict:
    """``+experiment=efficiency`` (its settings and method list), one process per method."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from layerpeft.config import CONF_DIR
    from layerpeft.report.tables import collect_runs, efficiency_rows, markdown

    experiment = OmegaConf.load(Path(CONF_DIR) / "experiment" / "efficiency.yaml")
    methods = (args.methods or experiment.hydra.sweeper.params.method).split(",")
    out = Path(args.out)
    exe = str(Path(sys.executable).with_name("layerpeft"))
    for method in methods:
        run_dir = out / method
        cmd = [exe, "train", "+experiment=efficiency", f"model={args.model}", f"method={method}",
               f"data.dir={args.data_dir}", f"train.precision={args.precision}", "logger=none",
               f"hydra.run.dir={run_dir}"]
        p = subprocess.run(cmd, capture_output=True, text=True)
        error = (p.stderr.strip().splitlines() or [f"exit status {p.returncode}"])[-1] if p.returncode else None
        print(f"{method}: {'failed: ' + error if error else 'ok'}", file=sys.stderr)
        if error:  # keep the reason beside the other runs (e.g. bitfit on a bias-free model)
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "metrics.json").write_text(json.dumps({"status": "failed", "method": method, "error": error}))
    header, rows = efficiency_rows(collect_runs([out]), args.baseline)
    print(markdown(header, rows), file=sys.stderr)
    return {"bench": "efficiency", "model": args.model, "precision": args.precision,
            "settings": OmegaConf.to_container(OmegaConf.masked_copy(experiment, ["data", "train", "eval"])),
            "rows": [dict(zip(header, row)) for row in rows]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="name", required=True)
    for name in ("train", "_train_worker", "ist", "mfu"):
        p = sub.add_parser(name)
        p.add_argument("--model", default="llama7b" if name == "mfu" else "smollm2_135m")
        p.add_argument("--source", default="random" if name == "mfu" else None,
                       help="model.source for the base (random: the architecture, no download)")
        p.add_argument("--method", default="lora")
        p.add_argument("--methods", default="lora,hlpt", help="(mfu) one process per method")
        p.add_argument("--peak-tflops", type=float, default=None,
                       help="(mfu) dense peak of the device; default 989 (H200 bf16) on cuda, none on cpu")
        p.add_argument("--baseline", default="peft", choices=["peft"])
        p.add_argument("--impl", default="ours", choices=["ours", "peft"])
        # ist: 10 timed steps hold one importance update (interval 10), as training averages it
        p.add_argument("--steps", type=int, default=10 if name == "ist" else 5)
        p.add_argument("--batch", type=int, default=16 if name in ("ist", "mfu") else 4)
        p.add_argument("--micro-batch", type=int, default=4, help="gradient accumulation as in training")
        p.add_argument("--seq-len", type=int, default=256 if name == "mfu" else 128)
        p.add_argument("--repeats", type=int, default=2)
        p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
        p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                       help="cuda: the base in bf16 when --dtype bf16, GPU peak memory instead of RSS")
        p.add_argument("--ist", action="store_true", help="(worker) train with IST")
    for name in ("decode", "_decode_worker"):
        p = sub.add_parser(name)
        p.add_argument("--model", default="smollm2_135m")
        p.add_argument("--methods", default="para,lora,ia3")
        p.add_argument("--method", default="para")
        p.add_argument("--prompt-tokens", type=int, default=274)
        p.add_argument("--new-tokens", type=int, default=32)
        p.add_argument("--repeats", type=int, default=3)
    p = sub.add_parser("efficiency")
    p.add_argument("--model", default="smollm2_135m")
    p.add_argument("--methods", default="", help="comma-separated (default: the experiment's list)")
    p.add_argument("--out", default="outputs/efficiency")
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--baseline", default=None, help="method the ratios are relative to (default: full)")
    p = sub.add_parser("eval")
    p.add_argument("--model", default="smollm2_135m")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    for name in ("pipeline", "_pipeline_worker"):
        p = sub.add_parser(name)
        p.add_argument("--model", default="smollm2_135m")
        p.add_argument("--method", default="lora", choices=["lora"], help="HF peft's side is LoRA")
        p.add_argument("--data-dir", default=os.environ.get("LAYERPEFT_DATA", "data"))
        p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
        p.add_argument("--train-examples", type=int, default=64, help="K: the first K of the math-1000 sample")
        p.add_argument("--eval-questions", type=int, default=64, help="N: the first N holdout questions")
        p.add_argument("--eval-batch", type=int, default=32)
        p.add_argument("--eval-adapter", metavar="RUN", default=None,
                       help="answer with this finished LoRA run's adapter instead of the one the bench trained")
        p.add_argument("--part", choices=["train", "eval"])
        p.add_argument("--impl", choices=["ours", "hf"])
        p.add_argument("--adapter-dir")
    args = ap.parse_args()
    fn = {"train": bench_train, "_train_worker": train_worker, "ist": bench_ist, "decode": bench_decode,
          "_decode_worker": decode_worker, "eval": bench_eval, "pipeline": bench_pipeline,
          "_pipeline_worker": pipeline_worker, "efficiency": bench_efficiency, "mfu": bench_mfu}[args.name]
    print(json.dumps(fn(args)))


if __name__ == "__main__":
    main()
