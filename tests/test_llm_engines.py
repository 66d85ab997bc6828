"""Engine request construction without heavy dependencies: vLLM via a fake module, the
OpenAI engine against a scripted local HTTP server (retries, json_schema fallback, fences)."""

from __future__ import annotations

import json
import os
import sys
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from cxrctx.errors import CxrctxError
from cxrctx.llm import ChatRequest, Sampling, get_engine
from cxrctx.llm.fake import minimal_instance

SCHEMA = {
    "type": "object",
    "properties": {
        "edema": {
            "type": "object",
            "properties": {"status": {"type": "string", "enum": ["positive", "negative"]}},
            "required": ["status"],
        }
    },
    "required": ["edema"],
    "additionalProperties": False,
}


def test_minimal_instance():
    assert minimal_instance(SCHEMA) == {"edema": {"status": "positive"}}


# ---------------------------------------------------------------------------- vLLM


def _fake_vllm(monkeypatch: pytest.MonkeyPatch, platform: str = "cuda") -> dict:
    """A stand-in `vllm` module (no vLLM here): records engine args, the environment the
    engine started with, and the chat calls. `platform` is what vLLM would detect."""
    import dataclasses

    seen: dict = {}

    class SamplingParams:
        def __init__(self, **kw):
            self.kw = kw

    class StructuredOutputsParams:
        def __init__(self, json=None, **kw):
            self.json = json

    class Out:
        def __init__(self, text):
            self.text, self.finish_reason, self.token_ids = text, "stop", [1, 2, 3]

    class RequestOutput:
        def __init__(self, text):
            self.prompt_token_ids, self.outputs = [0] * 10, [Out(text)]

    class LLM:
        def __init__(self, **kw):
            seen["engine_args"] = kw
            seen["env"] = dict(os.environ)

        def chat(self, messages, sampling_params=None, use_tqdm=True):
            seen["messages"], seen["params"] = messages, sampling_params
            return [RequestOutput('{"edema": {"status": "negative"}}') for _ in messages]

    @dataclasses.dataclass
    class EngineArgs:  # a few of vLLM's EngineArgs fields
        model: str = ""
        tensor_parallel_size: int = 1
        dtype: str = "auto"
        max_model_len: int | None = None
        gpu_memory_utilization: float = 0.9
        seed: int = 0
        enable_prefix_caching: bool = True
        trust_remote_code: bool = False
        enforce_eager: bool = False
        distributed_executor_backend: str | None = None

    class Platform:
        def is_cpu(self):
            return platform == "cpu"

        def is_unspecified(self):
            return platform == "none"

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams, vllm.__version__ = LLM, SamplingParams, "0.0-fake"
    sp = types.ModuleType("vllm.sampling_params")
    sp.StructuredOutputsParams = StructuredOutputsParams
    plat = types.ModuleType("vllm.platforms")
    plat.current_platform = Platform()
    au = types.ModuleType("vllm.engine.arg_utils")
    au.EngineArgs = EngineArgs
    for name, mod in (
        ("vllm", vllm),
        ("vllm.sampling_params", sp),
        ("vllm.platforms", plat),
        ("vllm.engine", types.ModuleType("vllm.engine")),
        ("vllm.engine.arg_utils", au),
    ):
        monkeypatch.setitem(sys.modules, name, mod)
    for k in (
        "VLLM_NO_USAGE_STATS",
        "VLLM_DO_NOT_TRACK",
        "DO_NOT_TRACK",
        "VLLM_CPU_KVCACHE_SPACE",
        "VLLM_ENABLE_V1_MULTIPROCESSING",
    ):
        monkeypatch.setenv(k, "")  # recorded, so the engine's settings are undone after
        monkeypatch.delenv(k)
    return seen


def test_vllm_request_construction_on_a_gpu(monkeypatch):
    seen = _fake_vllm(monkeypatch, "cuda")
    eng = get_engine(
        "vllm",
        "some/model-8b",
        tensor_parallel_size=2,
        dtype="bfloat16",
        max_model_len=4096,
        gpu_memory_utilization=0.8,
    )
    args = seen["engine_args"]
    assert args["enable_prefix_caching"] is True and args["tensor_parallel_size"] == 2
    assert (
        args["dtype"] == "bfloat16"
        and args["max_model_len"] == 4096
        and args["gpu_memory_utilization"] == 0.8
    )
    assert "enforce_eager" not in args  # CUDA graphs stay on on a GPU
    reqs = [
        ChatRequest([{"role": "user", "content": "a"}], json_schema=SCHEMA),
        ChatRequest([{"role": "user", "content": "b"}]),
    ]
    out = eng.complete(reqs, Sampling(max_tokens=200, temperature=0.0, seed=3))
    p0, p1 = seen["params"]
    assert p0.kw["max_tokens"] == 200 and p0.kw["seed"] == 3  # vLLM's default of 16 is never used
    assert p0.kw["structured_outputs"].json == SCHEMA
    assert "structured_outputs" not in p1.kw
    assert len(seen["messages"]) == 2  # one llm.chat over the whole batch
    assert out[0].completion_tokens == 3 and out[0].prompt_tokens == 10


def test_vllm_gpu_defaults_and_batch_sized_from_memory(monkeypatch):
    from types import SimpleNamespace

    from cxrctx.llm.vllm_engine import batch_from_memory

    seen = _fake_vllm(monkeypatch, "cuda")
    get_engine("vllm", "some/model-8b")
    assert seen["engine_args"]["gpu_memory_utilization"] == 0.9
    assert seen["engine_args"]["tensor_parallel_size"] == 1
    cfg = SimpleNamespace(
        cache_config=SimpleNamespace(num_gpu_blocks=4000, block_size=16),
        scheduler_config=SimpleNamespace(max_num_seqs=256),
    )
    llm = SimpleNamespace(llm_engine=SimpleNamespace(vllm_config=cfg))
    assert batch_from_memory(llm) == 4 * min(256, 4000 * 16 // 1024)  # 250 requests fit at once
    cfg.cache_config.num_gpu_blocks = 100_000
    assert batch_from_memory(llm) == 4 * 256  # capped by vLLM's max_num_seqs


def test_vllm_on_cpu_gets_no_gpu_options(monkeypatch):
    """vLLM's CPU build: no gpu_memory_utilization (it would reserve 90 % of RAM), the KV
    cache from kv_cache_space_gib, eager mode, the engine in this process."""
    seen = _fake_vllm(monkeypatch, "cpu")
    eng = get_engine("vllm", "some/model", kv_cache_space_gib=2)
    args, env = seen["engine_args"], seen["env"]
    assert "gpu_memory_utilization" not in args and "kv_cache_space_gib" not in args
    assert args["enforce_eager"] is True and args["distributed_executor_backend"] == "uni"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2" and env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert eng.gpu is False and eng.default_batch_size == 32
    with pytest.raises(CxrctxError, match=r"applies to a GPU.*kv_cache_space_gib"):
        get_engine("vllm", "some/model", gpu_memory_utilization=0.5)
    with pytest.raises(CxrctxError, match="positive whole number of GiB"):
        get_engine("vllm", "some/model", kv_cache_space_gib=0.5)
    get_engine("vllm", "some/model", enforce_eager=False, tensor_parallel_size=2)
    assert seen["engine_args"]["enforce_eager"] is False  # the user's choice wins
    assert "distributed_executor_backend" not in seen["engine_args"]


def test_vllm_options_are_checked_against_the_installed_engine_args(monkeypatch):
    _fake_vllm(monkeypatch, "cuda")
    with pytest.raises(CxrctxError, match=r"n_ctx: not engine arguments of vLLM 0.0-fake"):
        get_engine("vllm", "m", n_ctx=4096)
    with pytest.raises(CxrctxError, match="kv_cache_space_gib applies to vLLM's CPU build"):
        get_engine("vllm", "m", kv_cache_space_gib=2)


def test_vllm_usage_statistics_are_off_before_the_engine_starts(monkeypatch):
    """MIMIC work never reports home: vLLM's opt-out switches are set before LLM(...)."""
    seen = _fake_vllm(monkeypatch, "cpu")
    get_engine("vllm", "m")
    env = seen["env"]
    assert (env["VLLM_NO_USAGE_STATS"], env["VLLM_DO_NOT_TRACK"], env["DO_NOT_TRACK"]) == (
        "1",
        "1",
        "1",
    )


def test_vllm_missing_no_device_or_unloadable_model_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(CxrctxError, match="vllm backend needs vLLM"):
        get_engine("vllm", "m")
    _fake_vllm(monkeypatch, "none")
    with pytest.raises(CxrctxError, match="found no device"):
        get_engine("vllm", "m")
    _fake_vllm(monkeypatch, "cpu")
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(CxrctxError, match="not a single file; convert a GGUF"):
        get_engine("vllm", str(tmp_path / "m.gguf"))
    with pytest.raises(CxrctxError, match=r"no config\.json"):
        get_engine("vllm", str(tmp_path))
    with pytest.raises(CxrctxError, match="no such model folder"):
        get_engine("vllm", str(tmp_path / "absent"))


# ---------------------------------------------------------------------------- OpenAI-compatible


class _Stub(BaseHTTPRequestHandler):
    script: ClassVar[list] = []
    bodies: ClassVar[list] = []

    def log_message(self, *a):  # quiet
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append({"body": body, "auth": self.headers.get("Authorization")})
        rf = body.get("response_format") or {}
        if rf.get("type") == "json_schema":
            return self._send(
                400, {"error": {"message": "response_format json_schema is not supported"}}
            )
        action = type(self).script.pop(0) if type(self).script else "ok"
        if action == "500":
            return self._send(500, {"error": {"message": "busy"}})
        if action == "429":
            return self._send(429, {"error": {"message": "slow down"}})
        content = '```json\n{"edema": {"status": "negative"}}\n```'
        self._send(
            200,
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
            },
        )

    def _send(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def stub_server():
    _Stub.script, _Stub.bodies = [], []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    finally:
        srv.shutdown()
        srv.server_close()


def test_openai_retries_fallback_and_fences(stub_server, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-secret-123")
    _Stub.script = ["500", "429"]
    eng = get_engine(
        "openai",
        "served",
        base_url=stub_server,
        api_key_env="MY_KEY",
        backoff_s=0.01,
        concurrency=2,
    )
    assert "sk-secret" not in repr(eng)
    reqs = [
        ChatRequest([{"role": "user", "content": str(i)}], json_schema=SCHEMA) for i in range(3)
    ]
    out = eng.complete(reqs, Sampling(max_tokens=50))
    assert [c.finish_reason for c in out] == ["stop"] * 3
    assert all(
        json.loads(c.text) == {"edema": {"status": "negative"}} for c in out
    )  # fences stripped
    assert eng.format_mode == "json_object"
    formats = [b["body"].get("response_format", {}).get("type") for b in _Stub.bodies]
    assert formats[0] == "json_schema" and formats.count("json_schema") == 1  # fell back once
    last = _Stub.bodies[-1]["body"]
    assert (
        last["response_format"] == {"type": "json_object", "schema": SCHEMA}
        and last["max_tokens"] == 50
    )
    assert _Stub.bodies[-1]["auth"] == "Bearer sk-secret-123"
    assert len(_Stub.bodies) == 1 + 2 + 3  # probe, two retried errors, three answers


def test_openai_gives_up_after_max_retries(stub_server):
    _Stub.script = ["500"] * 10
    eng = get_engine(
        "openai",
        "served",
        base_url=stub_server,
        backoff_s=0.001,
        max_retries=2,
        response_format="json_object",
    )
    out = eng.complete(
        [ChatRequest([{"role": "user", "content": "x"}], json_schema=SCHEMA)], Sampling()
    )
    assert out[0].finish_reason == "error" and "Error code: 500" in (out[0].error or "")
    assert len(_Stub.bodies) == 3


def test_openai_needs_an_explicit_base_url(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-would-be-sent")
    with pytest.raises(CxrctxError, match="explicit base_url"):
        get_engine("openai", "gpt")


def test_engine_opt_reaches_vllm_as_json(monkeypatch):
    """`--engine-opt enable_prefix_caching=false` is the boolean false, not the string."""
    from cxrctx.llm.spec import EngineSpec, make_engine, parse_engine_opts

    seen = _fake_vllm(monkeypatch)
    opts = parse_engine_opts(["enable_prefix_caching=false", "max_model_len=2048"])
    make_engine(EngineSpec(backend="vllm", model="m", options=opts))
    assert seen["engine_args"]["enable_prefix_caching"] is False
    assert seen["engine_args"]["max_model_len"] == 2048
