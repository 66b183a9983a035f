"""lm-evaluation-harness scores a run through the registered `layerpeft` model, offline, on tasks
defined from local files (both request types: log-likelihood choices and generation)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

EXE = str(Path(sys.executable).with_name("layerpeft"))

CHOICE_TASK = """task: layerpeft_local_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
"""
GENERATE_TASK = """task: layerpeft_local_generate
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
"""


def test_lm_eval_scores_a_hybrid_run_offline(tmp_path):
    run = tmp_path / "run"
    p = subprocess.run([EXE, "train", "model=tiny", "method=hlpt", "dataset=synthetic_math", "logger=none",
                        "train.max_steps=2", "eval.enabled=false", f"hydra.run.dir={run}"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "choices": [str(i + 1), str(i + 2)],
                                        "label": 0, "answer": str(i + 1)}) + "\n" for i in range(4)))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "choice.yaml").write_text(CHOICE_TASK.format(data=data))
    (tasks / "generate.yaml").write_text(GENERATE_TASK.format(data=data))
    out = tmp_path / "results"
    p = subprocess.run([EXE, "lm-eval", "--model", "layerpeft", "--model_args", f"run={run}", "--batch_size", "4",
                        "--tasks", "layerpeft_local_choice,layerpeft_local_generate", "--include_path", str(tasks),
                        "--output_path", str(out)],
                       capture_output=True, text=True, timeout=900, env={"HF_DATASETS_OFFLINE": "1",
                                                                         "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                                                                         "HOME": str(tmp_path)})
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    (result_file,) = out.rglob("results_*.json")
    results = json.loads(result_file.read_text())["results"]
    choice, generated = results["layerpeft_local_choice"], results["layerpeft_local_generate"]
    assert 0.0 <= choice["acc,none"] <= 1.0 and "exact_match,none" in generated
