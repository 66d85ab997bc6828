"""End to end with a real tiny model (SmolLM2-135M-Instruct GGUF) on the CPU.

Its labels are clinically meaningless; these tests check plumbing: schema-valid output
through the grammar, provenance, caching, failure recording, and the `openai` backend
against llama.cpp's own OpenAI-compatible server (started here, stopped by PID).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import polars as pl
import pytest
from _llm_helpers import free_port, smollm_gguf

from cxrctx.io import read_manifest, read_shards
from cxrctx.labeling import label_documents, label_lesions, schema_sha256
from cxrctx.llm import Sampling, get_engine
from cxrctx.models import LesionLabel
from cxrctx.vocab import LESIONS

pytestmark = pytest.mark.llm

DOCS = {
    "a": "FINDINGS: Small left pleural effusion. No pneumothorax.",
    "b": "IMPRESSION: Heart is enlarged.",
    "c": "Normal chest radiograph.",
}


@pytest.fixture(scope="module")
def gguf() -> str:
    return smollm_gguf()


@pytest.fixture(scope="module")
def engine(gguf):
    eng = get_engine("llamacpp", gguf, n_ctx=2048, n_threads=2, grammar="always")
    yield eng
    eng.close()


def test_llamacpp_labels_are_schema_valid_and_cached(engine, tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in DOCS.items()))
    run = label_lesions(src, tmp_path / "out", engine=engine, sampling=Sampling(max_tokens=160))
    c = run.result.counts
    assert c["documents"] == 3 and c["no_candidate"] == 1 and c["labeled"] + c["failed"] == 3
    assert c["llm_called"] == 2
    labels = read_shards(tmp_path / "out" / "labels")
    assert labels.height == 14 * c["labeled"]
    for row in labels.select(list(LesionLabel.model_fields)).iter_rows(named=True):
        LesionLabel.model_validate(row)
    assert set(labels["schema_sha256"]) == {schema_sha256()} and set(labels["backend"]) == {
        "llamacpp"
    }
    docs = read_shards(tmp_path / "out" / "documents")
    called = docs.filter(pl.col("llm_called"))
    assert (called["completion_tokens"] > 0).all() and (called["latency_s"] > 0).all()
    assert called["raw_text"].str.starts_with("{").all()
    m = read_manifest(tmp_path / "out" / "manifest.json")
    assert m.extra["provenance"]["model"] == engine.model
    # second run: all from the cache, no engine call, same labels
    calls = {"n": 0}
    orig = engine.complete

    def counting(reqs, sampling):
        calls["n"] += len(reqs)
        return orig(reqs, sampling)

    engine.complete = counting
    try:
        run2 = label_lesions(
            src, tmp_path / "out", engine=engine, sampling=Sampling(max_tokens=160)
        )
    finally:
        del engine.complete
    assert calls["n"] == 0 and run2.result.counts["cached"] == 2
    assert read_shards(tmp_path / "out" / "labels").equals(labels)


def test_llamacpp_truncation_becomes_failure_rows(engine):
    df = pl.DataFrame({"id": ["a"], "text": [DOCS["a"]]})
    res = label_documents(df, engine, sampling=Sampling(max_tokens=4))
    assert res.counts["failed"] == 1 and res.labels.height == 0
    f = res.failures.row(0, named=True)
    assert "truncated" in f["reason"] and f["attempts"] == 2 and f["raw_text"]
    assert res.documents["finish_reason"][0] == "length"


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/models", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("llama_cpp.server did not start")


def test_openai_backend_against_llama_cpp_server(gguf, tmp_path):
    pytest.importorskip("uvicorn", reason="llama-cpp-python[server] extra not installed")
    pytest.importorskip("fastapi", reason="llama-cpp-python[server] extra not installed")
    port = free_port()
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            gguf,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            "--n_threads",
            "2",
            "--model_alias",
            "smollm2",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}/v1"
        _wait_ready(base, proc)
        eng = get_engine("openai", "smollm2", base_url=base, concurrency=2, timeout_s=120)
        df = pl.DataFrame({"id": ["b"], "text": [DOCS["b"]]})
        res = label_documents(
            df, eng, sampling=Sampling(max_tokens=120), cache_dir=tmp_path / "cache"
        )
        assert res.counts["labeled"] + res.counts["failed"] == 1
        assert eng.format_mode == "json_object"  # llama.cpp's server rejects json_schema
        assert res.labels.height == 14 * res.counts["labeled"]
        assert set(res.labels["lesion"]) <= set(LESIONS) and set(res.labels["backend"]) <= {
            "openai"
        }
        ok = res.documents.filter(pl.col("status") == "labeled")
        assert ok.height >= 1 and (ok["prompt_tokens"] > 0).all()
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
