"""label-lesions against a scripted, hostile OpenAI-compatible server on 127.0.0.1.

The server (started and stopped by the `server` fixture) answers each request with what
the test scripted: malformed HTTP 200 bodies, 5xx/429 with Retry-After, 401, an echo of
the API key, answers about lesions that were not asked, multi-megabyte answers.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from cxrctx.cli import app
from cxrctx.errors import CxrctxError
from cxrctx.io import read_shards
from cxrctx.labeling import label_lesions
from cxrctx.llm import get_engine
from cxrctx.llm.runner import RAW_TEXT_MAX_CHARS
from cxrctx.llm.spec import EngineSpec, make_engine, parse_engine_opts

runner = CliRunner()
KEY = "sk-test-SECRET-0123456789abcdef"
DOCS = {
    "d1": "Small left pleural effusion.",
    "d2": "Heart is enlarged.",
    "d3": "Patchy right lower lobe consolidation.",
}

Reply = tuple[int, dict[str, str], bytes]


def chat(content: Any, finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def candidates(body: dict[str, Any]) -> list[str]:
    rf = body.get("response_format") or {}
    schema = rf.get("json_schema", {}).get("schema") or rf.get("schema") or {}
    return list(schema.get("required", []))


def good(body: dict[str, Any], extra: dict[str, Any] | None = None) -> Reply:
    ans = {
        c: {"reasoning": "stated", "status": "positive", "location": "left"}
        for c in candidates(body)
    }
    return ok_json(chat(json.dumps({**ans, **(extra or {})})))


def ok_json(obj: Any, code: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return code, {"Content-Type": "application/json", **(headers or {})}, json.dumps(obj).encode()


class Hostile:
    """What the server does: `script(body, n)` -> (status, headers, body bytes)."""

    def __init__(self) -> None:
        self.script: Callable[[dict[str, Any], int], Reply] = lambda body, n: good(body)
        self.requests: list[dict[str, Any]] = []
        self.times: list[float] = []
        self.lock = threading.Lock()


@pytest.fixture
def server():
    state = Hostile()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                state.requests.append(body)
                state.times.append(time.monotonic())
                n = len(state.requests)
            code, headers, data = state.script(body, n)
            self.send_response(code)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    state.url = f"http://127.0.0.1:{srv.server_address[1]}/v1"  # type: ignore[attr-defined]
    try:
        yield state
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(timeout=5)


def _src(tmp_path: Path, docs: dict[str, str] = DOCS) -> Path:
    p = tmp_path / "docs.csv"
    pl.DataFrame({"id": list(docs), "text": list(docs.values())}).write_csv(p)
    return p


def _cli(server: Hostile, src: Path, out: Path, *extra: str) -> Any:
    """label-lesions against the hostile server; `--mode llm` so every document reaches it
    (the hybrid default asks only about lesions the rules find ambiguous)."""
    args = [
        "label-lesions",
        str(src),
        "--out",
        str(out),
        "--backend",
        "openai",
        "--model",
        "m",
        "--mode",
        "llm",
        "--base-url",
        server.url,
        "--api-key-env",
        "HOSTILE_KEY",  # type: ignore[attr-defined]
        "--engine-opt",
        "max_retries=1",
        "--engine-opt",
        "backoff_s=0.01",
        *extra,
    ]
    return runner.invoke(app, args)


def _engine(server: Hostile, **kw: Any) -> Any:
    opts = {"max_retries": 1, "backoff_s": 0.01, "api_key_env": "HOSTILE_KEY", **kw}
    return get_engine("openai", "m", base_url=server.url, **opts)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- 1 malformed 200


@pytest.mark.parametrize(
    "reply",
    [
        ok_json({**chat("x"), "choices": []}),
        ok_json({**chat("x"), "choices": [{"index": 0, "finish_reason": "stop"}]}),
        (200, {"Content-Type": "text/plain"}, b"I am not JSON"),
        ok_json([1, 2, 3]),
        ok_json(chat([{"type": "text", "text": "{}"}])),
    ],
    ids=["empty-choices", "no-message", "text-body", "json-array", "list-content"],
)
def test_malformed_200_bodies_become_failure_rows_not_tracebacks(server, tmp_path, reply):
    server.script = lambda body, n: reply
    r = _cli(server, _src(tmp_path), tmp_path / "o")
    assert isinstance(r.exception, SystemExit), r.output  # a clean exit 1, not a crash
    assert r.exit_code == 1 and "Traceback" not in r.output
    fails = read_shards(tmp_path / "o" / "failures")
    assert fails.height == 3 and fails["transient"].all()
    assert fails["reason"].str.contains("malformed|engine error").all()


# ---------------------------------------------------------------------------- 2 transient not cached


def test_transient_failures_are_not_cached_a_rerun_retries_them(server, tmp_path):
    server.script = lambda body, n: ok_json({"error": {"message": "busy"}}, 503)
    src, out = _src(tmp_path), tmp_path / "o"
    assert _cli(server, src, out).exit_code == 1
    server.script = lambda body, n: good(body)
    before = len(server.requests)
    r = _cli(server, src, out)
    assert r.exit_code == 0, r.output
    assert len(server.requests) - before == 3  # all three asked again
    assert read_shards(out / "failures").height == 0


# ---------------------------------------------------------------------------- 3 base_url in the key


def test_cache_key_includes_the_base_url(server, tmp_path):
    src, out, cache = _src(tmp_path), tmp_path / "o", tmp_path / "cache"
    label_lesions(src, out, engine=_engine(server), cache_dir=cache)
    n = len(server.requests)
    label_lesions(src, out, engine=_engine(server), cache_dir=cache)
    assert len(server.requests) == n  # same server: all cached
    other = server.url.replace("127.0.0.1", "localhost")  # type: ignore[attr-defined]
    eng = get_engine("openai", "m", base_url=other, max_retries=1, backoff_s=0.01)
    run = label_lesions(src, tmp_path / "o2", engine=eng, cache_dir=cache)
    assert len(server.requests) == 2 * n and run.result.counts["cached"] == 0


# ---------------------------------------------------------------------------- 4 privacy


def test_openai_backend_needs_an_explicit_base_url(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    r = runner.invoke(
        app,
        [
            "label-lesions",
            str(_src(tmp_path)),
            "--out",
            str(tmp_path / "o"),
            "--backend",
            "openai",
            "--model",
            "gpt-4o",
        ],
    )
    assert r.exit_code == 2 and "explicit --base-url" in r.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "url", ["https://api.openai.com/v1", "https://openrouter.ai/api/v1", "api.groq.com/openai/v1"]
)
def test_public_api_hosts_are_refused_citing_the_data_use_rule(tmp_path, url):
    r = runner.invoke(
        app,
        [
            "label-lesions",
            str(_src(tmp_path)),
            "--out",
            str(tmp_path / "o"),
            "--backend",
            "openai",
            "--model",
            "m",
            "--base-url",
            url,
        ],
    )
    assert r.exit_code == 2 and "PhysioNet" in r.output and "--allow-public-api" in r.output
    assert "Azure OpenAI" in r.output and not (tmp_path / "o").exists()


def test_approved_routes_and_the_acknowledgement_flag():
    azure = EngineSpec(backend="openai", model="m", base_url="https://x.openai.azure.com/openai/v1")
    assert make_engine(azure).base_url.endswith("/v1")
    spec = EngineSpec(backend="openai", model="m", base_url="https://api.openai.com/v1")
    with pytest.raises(CxrctxError, match="public API"):
        make_engine(spec)
    ok = spec.model_copy(update={"allow_public_api": True})
    assert make_engine(ok).base_url == "https://api.openai.com/v1"  # built; nothing sent


def test_engine_opt_values_are_json():
    opts = parse_engine_opts(
        [
            "enable_prefix_caching=false",
            "n_ctx=4096",
            "dtype=bfloat16",
            "gpu_memory_utilization=0.8",
        ]
    )
    assert opts == {
        "enable_prefix_caching": False,
        "n_ctx": 4096,
        "dtype": "bfloat16",
        "gpu_memory_utilization": 0.8,
    }


# ---------------------------------------------------------------------------- 5 lesions not asked


def test_answers_for_lesions_not_asked_are_repaired_not_accepted(server, tmp_path):
    injected = {"mass": {"reasoning": "made up", "status": "positive", "location": "right"}}

    def script(body: dict[str, Any], n: int) -> Reply:
        repair = body["messages"][-1]["role"] == "user" and len(body["messages"]) > 2
        return good(body) if repair else good(body, injected)

    server.script = script
    run = label_lesions(_src(tmp_path), tmp_path / "o", engine=_engine(server))
    labels = read_shards(tmp_path / "o" / "labels")
    assert (
        labels.filter((pl.col("lesion") == "mass") & (pl.col("status") == "positive")).height == 0
    )
    assert run.result.counts["repair_requests"] == 3 and run.result.counts["labeled"] == 3
    repairs = [b for b in server.requests if len(b["messages"]) > 2]
    assert all("not asked: mass" in b["messages"][-1]["content"] for b in repairs)


# ---------------------------------------------------------------------------- 6 Retry-After, fail fast


def test_retry_after_is_respected(server, tmp_path):
    def script(body: dict[str, Any], n: int) -> Reply:
        if n == 1:
            return ok_json({"error": {"message": "slow down"}}, 429, {"Retry-After": "1"})
        return good(body)

    server.script = script
    run = label_lesions(_src(tmp_path, {"d1": DOCS["d1"]}), tmp_path / "o", engine=_engine(server))
    assert run.result.counts["labeled"] == 1
    assert server.times[1] - server.times[0] >= 0.95  # waited as asked, not backoff_s


@pytest.mark.parametrize("code", [401, 403, 404])
def test_permanent_errors_fail_fast_after_one_request(server, tmp_path, code):
    server.script = lambda body, n: ok_json({"error": {"message": "no"}}, code)
    many = {f"d{i}": f"Small left pleural effusion {i}." for i in range(40)}
    r = _cli(server, _src(tmp_path, many), tmp_path / "o")
    assert r.exit_code == 2 and "stopped after the first such answer" in r.output
    assert len(server.requests) == 1
    assert "Traceback" not in r.output and not (tmp_path / "o" / "manifest.json").exists()


# ---------------------------------------------------------------------------- 7 exit code


def test_exit_nonzero_when_any_document_failed_unless_allowed(server, tmp_path):
    server.script = lambda body, n: ok_json(chat("not json at all"))
    src = _src(tmp_path)
    r = _cli(server, src, tmp_path / "a")
    assert r.exit_code == 1 and "3 document(s) failed" in r.output
    assert "label-lesions documents:   0%|          | 0/3 " in r.output  # not a TTY: plain lines
    assert "label-lesions documents: 100%|##########| 3/3 " in r.output
    r = _cli(server, src, tmp_path / "b", "--allow-failures")
    assert r.exit_code == 0, r.output
    assert read_shards(tmp_path / "b" / "failures").height == 3


# ---------------------------------------------------------------------------- 8 secrets and size


def test_an_echoed_api_key_is_scrubbed_from_everything_written(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HOSTILE_KEY", KEY)

    def script(body: dict[str, Any], n: int) -> Reply:
        if n % 2:  # an unusable answer that quotes the key, then a usable one quoting it too
            return ok_json(chat(f"your key is {KEY}"))
        c = candidates(body)
        ans = {
            x: {"reasoning": f"key {KEY}"[:100], "status": "negative", "location": "left"}
            for x in c
        }
        return ok_json(chat(json.dumps(ans)))

    server.script = script
    out = tmp_path / "o"
    r = _cli(server, _src(tmp_path), out, "--allow-failures")
    assert r.exit_code == 0, r.output
    assert KEY not in r.output
    written = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".jsonl" for p in written)
    for p in written:
        data = p.read_bytes()
        if p.suffix == ".parquet":
            data = json.dumps(pl.read_parquet(p).to_dicts(), default=str).encode()
        assert KEY.encode() not in data, p
    assert "[REDACTED]" in read_shards(out / "labels")["rationale"].str.join("").item()


def test_huge_answers_are_capped_when_stored(server, tmp_path):
    server.script = lambda body, n: ok_json(chat("x" * 3_000_000))
    run = label_lesions(_src(tmp_path), tmp_path / "o", engine=_engine(server))
    assert run.result.counts["failed"] == 3
    fails = read_shards(tmp_path / "o" / "failures")
    assert fails["raw_text"].str.len_chars().max() <= RAW_TEXT_MAX_CHARS + 100
    cache_bytes = sum(p.stat().st_size for p in (tmp_path / "o" / "cache").glob("*.jsonl"))
    assert cache_bytes < 3 * 2 * (RAW_TEXT_MAX_CHARS + 2000)
