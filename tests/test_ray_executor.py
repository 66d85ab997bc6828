"""The Ray Data executor on a real local Ray: same bytes as the local executor, a killed
actor loses nothing, a SIGKILLed driver resumes from the cache, the tiny GGUF on actors."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

pytest.importorskip("ray.data")

import _llm_helpers
import ray
from _llm_helpers import TEXTS, good_answer, smollm_gguf
from ray import cloudpickle

from cxrctx.labeling import label_documents, label_lesions
from cxrctx.llm.base import ChatRequest, Completion
from cxrctx.llm.fake import FakeEngine
from cxrctx.llm.ray_executor import RayExecutor, SpecEngine
from cxrctx.llm.runner import Work
from cxrctx.llm.spec import EngineSpec

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_ray():
    # the workers import the test helpers by value (tests/ is not on their path)
    cloudpickle.register_pickle_by_value(_llm_helpers)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def answer(req: ChatRequest, kill_marker: str | None = None) -> Completion:
    """Deterministic answers (fixed latency, so documents compare byte for byte): invalid
    JSON for the cardiomegaly report (a repair, then a failure row), good ones otherwise."""
    user = req.messages[-1]["content"]
    if kill_marker and "nodule" in user and not os.path.exists(kill_marker):
        Path(kill_marker).write_text("killed")
        ray.kill(ray.get_runtime_context().current_actor, no_restart=False)
        time.sleep(60)  # dies here, mid-batch
    asked = " ".join(m["content"] for m in req.messages)
    text = "not json" if "enlarged" in asked else good_answer(req)
    return Completion(
        text, "stop", prompt_tokens=len(user.split()), completion_tokens=len(text.split())
    )


def engine(kill_marker: str | None = None, latency_s: float = 0.0) -> FakeEngine:
    responder = functools.partial(answer, kill_marker=kill_marker)
    return FakeEngine("scripted", responder=responder, latency_s=latency_s)


def corpus(path: Path, copies: int = 4) -> Path:
    """TEXTS repeated with new ids (cross-batch duplicates, an empty text, a failure)."""
    ids, texts = [], []
    for c in range(copies):
        for k, t in TEXTS.items():
            ids.append(f"{k}-{c}")
            texts.append(t if c % 2 == 0 else t.replace("Small", f"Small ({c})"))
    pl.DataFrame({"id": ids, "text": texts}).write_parquet(path)
    return path


def output_bytes(out: Path) -> dict[str, bytes]:
    """Every Parquet shard and cache file of a label-lesions output, by relative path."""
    files = sorted(out.glob("*/*.parquet")) + sorted(out.glob("cache/*.jsonl"))
    return {str(f.relative_to(out)): f.read_bytes() for f in files}


def test_ray_output_equals_local_byte_for_byte(local_ray, tmp_path):
    src = corpus(tmp_path / "docs.parquet")
    local = label_lesions(src, tmp_path / "local", engine=engine(), batch_size=3)
    ex = RayExecutor(2, engine_factory=engine)
    remote = label_lesions(src, tmp_path / "ray", engine=engine(), batch_size=3, executor=ex)
    a, b = output_bytes(tmp_path / "local"), output_bytes(tmp_path / "ray")
    assert a.keys() == b.keys() and len(a) >= 4
    assert a == b
    assert local.result.counts == remote.result.counts
    assert remote.result.counts["failed"] >= 1 and remote.result.counts["cached"] >= 1
    assert local.manifest.counts == remote.manifest.counts


def test_in_order_ignores_a_repeated_batch_and_reports_a_lost_one():
    from cxrctx.errors import CxrctxError
    from cxrctx.llm.ray_executor import _in_order

    got = list(_in_order(3, {}, iter([(1, ["b"]), (0, ["a"]), (1, ["B"]), (2, ["c"])])))
    assert got == [["a"], ["b"], ["c"]]
    with pytest.raises(CxrctxError, match="batch 1 of 3 never came back"):
        list(_in_order(3, {}, iter([(0, ["a"]), (2, ["c"])])))


def test_spec_engine_has_the_built_engines_identity(monkeypatch):
    from cxrctx.llm.runner import engine_identity
    from cxrctx.llm.spec import make_engine

    spec = EngineSpec(backend="fake", model="m")
    assert engine_identity(SpecEngine(spec)) == engine_identity(make_engine(spec))
    monkeypatch.setenv("MY_KEY", "sk-secret")
    oa = SpecEngine(
        EngineSpec(backend="openai", model="m", base_url="http://h:1/v1", api_key_env="MY_KEY")
    )
    assert engine_identity(oa)["base_url"] == "http://h:1/v1" and oa.secrets() == ["sk-secret"]
    with pytest.raises(Exception, match="public API"):
        SpecEngine(EngineSpec(backend="openai", model="m", base_url="https://api.openai.com/v1"))


def test_without_spec_or_factory_the_ray_executor_refuses():
    from cxrctx.errors import CxrctxError

    with pytest.raises(CxrctxError, match="one engine per worker"):
        next(RayExecutor(1).map_batches(None, FakeEngine(), None, iter([[]]), []))  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_killed_actor_loses_nothing(local_ray, tmp_path):
    src = corpus(tmp_path / "docs.parquet")
    marker = tmp_path / "killed.txt"
    local = label_lesions(src, tmp_path / "local", engine=engine(), batch_size=3)
    ex = RayExecutor(2, engine_factory=functools.partial(engine, str(marker)))
    remote = label_lesions(src, tmp_path / "ray", engine=engine(), batch_size=3, executor=ex)
    assert marker.exists()  # an actor really died mid-batch
    assert output_bytes(tmp_path / "local") == output_bytes(tmp_path / "ray")
    docs = remote.result.documents
    assert docs.height == local.result.documents.height and docs["id"].n_unique() == docs.height


DRIVER = textwrap.dedent(
    """
    import functools, sys
    sys.path[:0] = [{tests!r}]
    import ray
    from ray import cloudpickle
    import _llm_helpers, test_ray_executor as t
    cloudpickle.register_pickle_by_value(_llm_helpers)
    cloudpickle.register_pickle_by_value(t)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    from cxrctx.labeling import label_lesions
    from cxrctx.llm.ray_executor import RayExecutor
    ex = RayExecutor(2, engine_factory=functools.partial(t.engine, None, 0.5), window=2)
    label_lesions({src!r}, {out!r}, engine=t.engine(), batch_size=2, executor=ex)
    """
)


def _cache_lines(out: Path) -> int:
    return sum(f.read_bytes().count(b"\n") for f in (out / "cache").glob("*.jsonl"))


@pytest.mark.slow
def test_a_sigkilled_driver_resumes_from_the_cache(local_ray, tmp_path):
    src = corpus(tmp_path / "docs.parquet", copies=6)
    out = tmp_path / "ray"
    code = DRIVER.format(tests=str(ROOT / "tests"), src=str(src), out=str(out))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while _cache_lines(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, "the driver finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
    finally:
        proc.wait(timeout=60)
    before = _cache_lines(out)
    assert before >= 2 and not (out / "manifest.json").exists()
    ex = RayExecutor(2, engine_factory=engine)
    resumed = label_lesions(src, out, engine=engine(), batch_size=2, executor=ex)
    local = label_lesions(src, tmp_path / "local", engine=engine(), batch_size=2)
    assert resumed.result.counts["cached"] >= before - 1  # the failure row is cached too
    cols = ["id", "status", "attempts", "raw_text", "error"]
    assert resumed.result.documents.select(cols).equals(local.result.documents.select(cols))
    assert resumed.result.labels.equals(local.result.labels)


@pytest.mark.slow
def test_tiny_gguf_on_ray_actors_equals_local(local_ray, tmp_path):
    gguf = smollm_gguf()
    docs = pl.DataFrame({"id": ["a", "b", "c"], "text": [TEXTS["s1"], TEXTS["s3"], TEXTS["s6"]]})
    spec = EngineSpec(backend="llamacpp", model=gguf, threads=1, options={"n_ctx": 2048})
    from cxrctx.llm.base import Sampling

    sampling = Sampling(max_tokens=96)
    from cxrctx.llm.spec import make_engine

    local = label_documents(docs, make_engine(spec), sampling=sampling, batch_size=1)
    ex = RayExecutor(2)
    remote = label_documents(
        docs, ex.driver_engine(spec), sampling=sampling, batch_size=1, executor=ex
    )
    assert remote.labels.equals(local.labels)
    cols = ["id", "status", "raw_text", "error", "completion_tokens"]
    assert remote.documents.select(cols).equals(local.documents.select(cols))


def test_vllm_processor_config_and_rows_with_a_stub(monkeypatch):
    """ray.data.llm is stubbed (no vLLM or GPU here): the config and the row mapping."""
    import types

    from cxrctx.errors import CxrctxError
    from cxrctx.llm import ray_vllm

    monkeypatch.setitem(sys.modules, "ray.data.llm", None)
    spec = EngineSpec(
        backend="vllm",
        model="Qwen/Qwen2.5-7B-Instruct",
        options={"tensor_parallel_size": 2, "dtype": "bfloat16"},
    )
    with pytest.raises(CxrctxError, match=r"pip install 'cxrctx\[ray,vllm\]'"):
        ray_vllm.processor_config(spec, workers=4)
    stub = types.SimpleNamespace(vLLMEngineProcessorConfig=lambda **kw: kw)
    monkeypatch.setitem(sys.modules, "ray.data.llm", stub)
    monkeypatch.setattr(ray.data, "llm", stub, raising=False)
    cfg = ray_vllm.processor_config(spec, workers=4, batch_size=32)
    assert cfg["model_source"] == spec.model and cfg["concurrency"] == 4
    assert cfg["engine_kwargs"]["tensor_parallel_size"] == 2
    assert cfg["engine_kwargs"]["enable_prefix_caching"] is True
    assert cfg["placement_group_config"] == {"bundles": [{"CPU": 1}]}  # no GPU here
    for stage in ("chat_template_stage", "tokenize_stage", "detokenize_stage"):
        assert cfg[stage] == {"num_cpus": ray_vllm.CPU_STAGE_CPUS}
    on_gpus = ray_vllm.processor_config(
        spec.model_copy(update={"options": {"gpu_memory_utilization": 0.8}}), 2, gpu=True
    )
    assert "placement_group_config" not in on_gpus and "tokenize_stage" not in on_gpus
    assert on_gpus["engine_kwargs"]["gpu_memory_utilization"] == 0.8
    with pytest.raises(CxrctxError, match="does not take"):
        ray_vllm.processor_config(spec.model_copy(update={"options": {"n_ctx": 1}}), workers=1)
    req = ChatRequest([{"role": "user", "content": "hi"}], json_schema={"type": "object"})
    row = ray_vllm.request_rows([req])[0]
    sp = {"temperature": 0.0, "top_p": 1.0, "max_tokens": 8, "seed": 0}
    pre = ray_vllm.preprocess(row, sp)
    assert pre["messages"] == req.messages
    assert pre["sampling_params"]["structured_outputs"] == {"json": '{"type": "object"}'}
    plain = ray_vllm.preprocess(ray_vllm.request_rows([ChatRequest([])])[0], {**sp})
    assert plain["sampling_params"]["structured_outputs"] is None
    post = ray_vllm.postprocess(
        {"i": 0, "generated_text": "{}", "num_input_tokens": 5, "num_generated_tokens": 8}
    )
    comps = ray_vllm.completions([post], 2, max_tokens=8, seconds=1.0)
    assert comps[0].text == "{}" and comps[0].finish_reason == "length"
    assert comps[1].finish_reason == "error" and comps[1].error_kind == "transient"


def test_work_round_trips_through_cloudpickle():
    w = Work("k", {"id": "x"}, ChatRequest([{"role": "user", "content": "x"}]))
    assert cloudpickle.loads(cloudpickle.dumps([w]))[0] == w
    assert json.loads(json.dumps(ChatRequest([]).messages)) == []


@pytest.mark.slow
def test_a_worker_engine_with_another_identity_fails_with_one_line(local_ray):
    from cxrctx.errors import CxrctxError

    docs = pl.DataFrame({"id": ["a"], "text": [TEXTS["s1"]]})
    ex = RayExecutor(1, engine_factory=functools.partial(FakeEngine, "other-model"))
    with pytest.raises(CxrctxError, match="the driver expected") as e:
        label_documents(docs, engine(), executor=ex)
    assert "\n" not in str(e.value)


def test_vllm_on_a_cpu_cluster_refuses_more_replicas_than_its_cpus(monkeypatch):
    """Without GPUs each replica holds a whole CPU and the processor's stages 0.8 more: a
    2-CPU cluster takes one replica; asking for two is a one-line error, not a hang."""
    from cxrctx.errors import CxrctxError
    from cxrctx.llm import ray_vllm

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    assert ray_vllm.cpu_need(1) == pytest.approx(1.8)
    ray_vllm.check_cpu_capacity(1)
    with pytest.raises(CxrctxError, match=r"2 replica\(s\) need 2\.8 CPUs.*has 2; use --workers 1"):
        ray_vllm.check_cpu_capacity(2)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 1.0})
    with pytest.raises(CxrctxError, match="give the cluster more CPUs"):
        ray_vllm.check_cpu_capacity(1)
    assert ray_vllm.map_kwargs(gpu=False) == {"num_cpus": ray_vllm.CPU_MAP_CPUS}
    assert ray_vllm.map_kwargs(gpu=True) == {}
