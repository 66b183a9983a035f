"""Data files, the holdout protocol, synthetic math and the prompt boundary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED_DATA
from layerpeft.config import compose
from layerpeft.data.files import DataError
from layerpeft.data.prompts import collate, prompt_text, tokenize_example
from layerpeft.data.synthetic import synthetic_math
from layerpeft.data.tasks import load_task
from layerpeft.eval.answers import AnswerSpec, is_correct
from layerpeft.models.tiny import byte_tokenizer

EXE = str(Path(sys.executable).with_name("layerpeft"))
needs_data = pytest.mark.skipif(not (SHARED_DATA / "math").is_dir(), reason="../shared/data not present")
HOLDOUT = {"SVAMP": 200, "AQuA": 51, "AddSub": 79, "MultiArith": 109, "SingleEq": 102, "GSM8K": 264}


@needs_data
def test_math_holdout_and_train_subsets():
    cfg = compose("train", ["dataset=math", f"data.dir={SHARED_DATA}", "data.train_size=1000"])
    task = load_task(cfg.dataset, cfg.data)
    assert {k: len(v) for k, v in task.evals.items()} == HOLDOUT
    assert len(task.train) == 1000
    again = load_task(cfg.dataset, cfg.data)
    assert [e["instruction"] for e in again.train] == [e["instruction"] for e in task.train]  # seed 42
    full = load_task(compose("train", ["dataset=math_full", f"data.dir={SHARED_DATA}"]).dataset, cfg.data)
    assert len(full.evals["GSM8K"]) == 1319 and len(full.evals["SVAMP"]) == 1000


@needs_data
def test_validation_set_is_disjoint_and_leaves_the_training_subset_unchanged():
    base = ["dataset=math", f"data.dir={SHARED_DATA}", "data.train_size=1000"]
    without = load_task(*_parts(compose("train", [*base, "data.val_size=0"])))
    task = load_task(*_parts(compose("train", base)))  # val_size 120 by default
    assert task.train == without.train and without.val == []
    assert len(task.val) == 120
    assert not {e["instruction"] for e in task.val} & {e["instruction"] for e in task.train}
    whole = load_task(*_parts(compose("train", ["dataset=math", f"data.dir={SHARED_DATA}"])))
    assert len(whole.train) + len(whole.val) == 3260  # carved out of the whole file
    with pytest.raises(DataError, match=r"data.val_size=3000 exceeds the 22\d\d examples left outside the training set"):
        load_task(*_parts(compose("train", [*base, "data.val_size=3000"])))


def test_synthetic_validation_problems_are_generated_beyond_the_others():
    task = load_task(*_parts(compose("train", ["dataset=synthetic_math", "data.val_size=50"])))
    assert len(task.train) == 600 and len(task.evals["synthetic"]) == 100 and len(task.val) == 50
    seen = {e["instruction"] for e in task.train + task.evals["synthetic"]}
    assert len([e for e in task.val if e["instruction"] not in seen]) > 40  # generated, not copied


def _parts(cfg):
    return cfg.dataset, cfg.data


@needs_data
def test_eval_cli_reports_holdout_sizes(tmp_path):
    p = subprocess.run(
        [EXE, "eval", "model=tiny", "method=none", "dataset=math", f"data.dir={SHARED_DATA}",
         "eval.max_new_tokens=1", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {k: v["n"] for k, v in metrics["datasets"].items()} == HOLDOUT
    assert sum(1 for _ in open(tmp_path / "predictions.jsonl")) == sum(HOLDOUT.values())


def test_missing_and_malformed_files_name_the_file(tmp_path):
    ds = {"name": "x", "train": {"path": "train.json"}, "evals": {"t": {"path": "test.json", "answer_type": "exact"}}}
    with pytest.raises(DataError, match=r"train\.json: file not found"):
        load_task(ds, {"dir": str(tmp_path)})
    (tmp_path / "train.json").write_text("{not json")
    with pytest.raises(DataError, match=r"train\.json: not readable as JSON"):
        load_task(ds, {"dir": str(tmp_path)})
    (tmp_path / "train.json").write_text(json.dumps([{"instruction": "q", "output": "a"}]))
    (tmp_path / "test.json").write_text(json.dumps([{"instruction": "q", "output": "a"}]))
    with pytest.raises(DataError, match=r"test\.json: no column for answer \(column 'answer'\)"):
        load_task(ds, {"dir": str(tmp_path)})
    with pytest.raises(DataError, match=r"dataset.evals.t.answer_type='capital': every evaluation set declares"):
        load_task({**ds, "evals": {"t": {"path": "test.json", "answer_type": "capital"}}}, {"dir": str(tmp_path)})


def write_own_data(root: Path) -> tuple[Path, Path]:
    """The README's worked example: a JSONL training file and a CSV evaluation set with its own columns."""
    root.mkdir(parents=True, exist_ok=True)
    train = root / "capitals_train.jsonl"
    train.write_text("".join(json.dumps({"question": f"Capital of Country{i}?", "target": f"The answer is City{i}."})
                             + "\n" for i in range(40)))
    test = root / "capitals_test.csv"
    test.write_text("question,city\nCapital of Country3?,City3\nCapital of Country7?,City7\n")
    return train, test


def own_data_args(train: Path, test: Path, gold_column: str = "city") -> list[str]:
    return ["dataset=custom", f"dataset.train.path={train}", "dataset.columns.instruction=question",
            "dataset.columns.output=target", f"+dataset.evals.capitals.path={test}",
            "+dataset.evals.capitals.answer_type=exact", f"+dataset.evals.capitals.columns.answer={gold_column}"]


def test_own_data_trains_and_is_scored_by_exact_match(tmp_path):
    train, test = write_own_data(tmp_path / "data")
    run = tmp_path / "run"
    common = ["model=tiny", "logger=none", "eval.max_new_tokens=8", "data.val_size=4"]
    p = subprocess.run([EXE, "train", *common, "method=lora", "train.max_steps=2", *own_data_args(train, test),
                        f"hydra.run.dir={run}"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["datasets"]["capitals"]["n"] == 2 and metrics["train"]["steps"] == 2
    # the same questions, with the gold of the first set to what the run answered: an exact match
    first = json.loads((run / "predictions.jsonl").read_text().splitlines()[0])
    assert first["response"].strip(), "premise: the model answered something"
    echo = tmp_path / "data" / "echo.csv"
    echo.write_text(f"question,city\nCapital of Country3?,\"{first['response']}\"\nCapital of Country7?,City7\n")
    out = tmp_path / "eval"
    e = subprocess.run([EXE, "eval", f"run={run}", "eval.max_new_tokens=8", *own_data_args(train, echo), f"hydra.run.dir={out}"],
                       capture_output=True, text=True, timeout=600)
    assert e.returncode == 0, e.stderr[-3000:]
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert lines[0]["response"] == first["response"] and lines[0]["correct"] is True
    assert lines[1]["correct"] is (lines[1]["response"].strip().lower() == "city7")


def test_an_unknown_answer_type_fails_at_composition_naming_the_set(tmp_path):
    train, test = write_own_data(tmp_path / "data")
    args = [a.replace("answer_type=exact", "answer_type=capital") for a in own_data_args(train, test)]
    p = subprocess.run([EXE, "train", "model=tiny", "logger=none", *args, f"hydra.run.dir={tmp_path / 'run'}"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "dataset.evals.capitals.answer_type='capital'" in p.stderr
    assert not (tmp_path / "run").exists()


def test_train_cli_fails_cleanly_on_missing_data(tmp_path):
    p = subprocess.run(
        [EXE, "train", "model=tiny", "dataset=math", f"data.dir={tmp_path}", "logger=none",
         f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 2
    assert "math_data.json: file not found" in p.stderr and "Traceback" not in p.stderr


def test_synthetic_math_is_deterministic_and_self_consistent():
    a, b = synthetic_math(50, seed=3), synthetic_math(50, seed=3)
    assert a == b and a != synthetic_math(50, seed=4)
    assert all(is_correct(AnswerSpec("number"), ex["output"], ex["answer"]) for ex in a)
    assert all(ex["output"].rstrip().endswith(f"The answer is {int(float(ex['answer']))}.") for ex in a)


def test_prompt_boundary_matches_generation_prompt():
    tok = byte_tokenizer()
    ex = {"instruction": "Add 2 and 3.", "input": "", "output": "\nThe answer is 5."}
    item = tokenize_example(tok, ex, cutoff=256, train_on_inputs=False)
    prompt_ids = tok(prompt_text(ex["instruction"]))["input_ids"]
    assert item["input_ids"][: item["prompt_len"]] == prompt_ids
    assert item["input_ids"][-1] == tok.eos_token_id
    assert item["labels"][: item["prompt_len"]] == [-100] * item["prompt_len"]
    with_inputs = tokenize_example(tok, ex, cutoff=256, train_on_inputs=True)
    assert with_inputs["labels"] == with_inputs["input_ids"]
    batch = collate([item, tokenize_example(tok, {**ex, "output": "x"}, 256, False)], tok.pad_token_id)
    assert batch["prompt_mask"].sum(1).tolist() == [item["prompt_len"]] * 2
    assert tokenize_example(tok, ex, cutoff=10, train_on_inputs=True)["input_ids"] == prompt_ids[:10]
    assert "### Input:\nctx" in prompt_text("q", "ctx")


@needs_data
def test_prepare_data_from_a_local_copy(tmp_path):
    p = subprocess.run([EXE, "prepare-data", "--from", str(SHARED_DATA), "--to", str(tmp_path / "data")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (tmp_path / "data" / "math" / "math_data.json").read_bytes() == (SHARED_DATA / "math" / "math_data.json").read_bytes()
    assert "unavailable: commonsense/hellaswag_test.json" in p.stdout  # not in the shared copy
    cfg = compose("train", ["dataset=math", f"data.dir={tmp_path / 'data'}"])
    assert {k: len(v) for k, v in load_task(cfg.dataset, cfg.data).evals.items()} == HOLDOUT


@needs_data
def test_commonsense_suite_reports_hellaswag_missing():
    cfg = compose("train", ["dataset=commonsense", f"data.dir={SHARED_DATA}"])
    task = load_task(cfg.dataset, cfg.data)
    assert len(task.train) == 15000 and len(task.val) == 120  # validation from outside the 15k mixture
    assert not {e["instruction"] for e in task.val} & {e["instruction"] for e in task.train}
    assert set(task.evals) == {"boolq", "piqa", "social_i_qa", "winogrande", "ARC-Challenge", "ARC-Easy", "openbookqa"}
    assert len(task.evals["boolq"]) == 3270 and len(task.evals["openbookqa"]) == 500
    assert set(task.missing) == {"hellaswag", "train:commonsense/hellaswag_train.json"}
    assert cfg.dataset.max_new_tokens == 32


def test_a_hub_style_dataset_directory_with_a_split(tmp_path):
    """``hub:`` takes what ``datasets.load_dataset`` takes: here a local dataset directory."""
    d = tmp_path / "ds"
    d.mkdir()
    (d / "train.jsonl").write_text("".join(json.dumps({"q": f"Q{i}", "a": f"A{i}", "gold": str(i)}) + "\n"
                                           for i in range(6)))
    ds = {"name": "hubby", "train": {"hub": str(d), "split": "train"},
          "columns": {"instruction": "q", "output": "a", "answer": "gold"},
          "evals": {"t": {"hub": str(d), "split": "train", "answer_type": "number"}}}
    task = load_task(ds, {"dir": str(tmp_path), "val_size": 0})
    assert [e["instruction"] for e in task.train] == [f"Q{i}" for i in range(6)]
    assert task.evals["t"][2]["answer"] == "2" and task.answers["t"].type == "number"
