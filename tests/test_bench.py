"""scripts/bench.py's input checks (its measurements are benchmarks, never tests): a bad
``--eval-adapter`` is one line and exit 1 before any model or data loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = str(Path(__file__).parents[1] / "scripts" / "bench.py")


def fake_run(root: Path, method: str) -> Path:
    (root / "adapter").mkdir(parents=True)
    (root / "adapter" / "adapter.safetensors").write_bytes(b"")
    (root / "config.yaml").write_text(f"method:\n  name: {method}\nmodel:\n  name: smollm2_135m\n")
    return root


@pytest.mark.parametrize("what,message", [
    ("missing", "not a finished layerpeft run (no adapter/adapter.safetensors)"),
    ("prefix", "a prefix run on smollm2_135m, the bench compares lora on smollm2_135m"),
])
def test_pipeline_refuses_an_adapter_it_cannot_compare(tmp_path, what, message):
    run = tmp_path / "run" if what == "missing" else fake_run(tmp_path / "run", what)
    p = subprocess.run([sys.executable, BENCH, "pipeline", "--data-dir", str(tmp_path / "no-data"),
                        "--eval-adapter", str(run)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    assert p.stderr.strip() == f"bench: --eval-adapter {run}: {message}"
