"""benchmarks/gpu_check.sh (the one script for a lent GPU machine) runs end to end on a CPU
in its reduced `--cpu-smoke` mode and writes its one JSON file. Slow (builds the trainer
model, ~1 min on 2 cores); needs torch + timm, so it runs in the main environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_cpu_smoke_writes_one_json(tmp_path):
    pytest.importorskip("timm")
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("VLLM_MODEL", None)
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), "--cpu-smoke"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    train = res["train"]
    assert "error" not in train
    if not (ROOT / "benchmarks" / "gpu_train_check.py").exists():  # gpu_check.py's own steps
        assert train["stage1"]["steps"] == 1 and train["stage1"]["images_s"] > 0
        assert train["stage2"]["images_s"] > 0
        assert train["projection"]["device_hours"] > 0
    try:
        import vllm  # noqa: F401

        has_vllm = True
    except ImportError:
        has_vllm = False
    if not has_vllm:
        assert res["label"]["skipped"] == "vLLM is not importable in this environment"
