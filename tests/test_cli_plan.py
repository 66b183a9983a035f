"""`layerpeft plan` through the real console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXE = str(Path(sys.executable).with_name("layerpeft"))


def run(*args, check=True):
    p = subprocess.run([EXE, "plan", *args], capture_output=True, text=True, timeout=120)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def test_plan_prints_table_and_json_last_line():
    p = run("model=llama7b", "method=hlpt")
    lines = p.stdout.strip().splitlines()
    out = json.loads(lines[-1])
    assert out["trainable_params"] == 4_507_680
    assert out["total_params"] == 6_738_415_616 + 4_507_680
    assert len(out["layers"]) == 32 and out["layers"][0] == ["lora_ffn"] and out["layers"][31] == ["prefix"]
    assert any(line.split()[:2] == ["23", "lora_ffn"] for line in lines)


def test_plan_middle_layers_are_empty():
    out = json.loads(run("model=llama7b", "method=h2lpt").stdout.strip().splitlines()[-1])
    assert out["layers"][12:28] == [[]] * 16
    assert out["trainable_params"] == 2_253_840


@pytest.mark.parametrize(
    "args,message",
    [
        (["method=hlpt", "layer_ratio=3:4:1"], "layer_ratio '3:4:1' has 3 segments but method 'hlpt' takes 2"),
        (["method=hlpt", "layer_ratio=[3,-1]"], "part -1 in '3:-1' is not a positive integer"),
        (["method=hlpt", "method.bottom=lorra"], "unknown module 'lorra'"),
        (["method=nope"], "Could not find 'method/nope'"),
    ],
)
def test_plan_rejects_bad_input_with_a_named_value(args, message):
    p = run("model=llama7b", *args, check=False)
    assert p.returncode != 0
    assert message in p.stderr
    assert "Traceback" not in p.stderr
