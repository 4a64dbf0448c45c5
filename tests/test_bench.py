"""Every bench script starts (its imports resolve and its options parse): a bench moved or renamed
a helper once and bench/app_latency.py stopped at its first line, unnoticed until it was run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.name for p in (ROOT / "bench").glob("*.py") if p.name not in {"hosted.py", "__init__.py"})


def test_the_bench_scripts_are_all_listed_here():
    assert SCRIPTS == [
        "app_latency.py", "doctor.py", "hostile_upload.py", "load_test.py", "predict_latency.py",
        "train_speed.py", "unknown.py",
    ]  # fmt: skip


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_bench_script_answers_help(script):
    out = subprocess.run(
        [sys.executable, f"bench/{script}", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage:" in out.stdout
