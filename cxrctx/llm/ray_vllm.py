"""The vLLM backend on a Ray cluster through `ray.data.llm`'s vLLM processor.

`ProcessorEngine.complete(requests, sampling)` sends one dataset of chat requests
through `build_processor(vLLMEngineProcessorConfig(...))`: `concurrency` vLLM replicas
(one GPU each, `tensor_parallel_size` GPUs with tensor parallelism; one CPU bundle each on a
cluster without GPUs, e.g. vLLM's CPU build), our messages as the
chat input, our JSON schema as vLLM structured output (`structured_outputs={"json": ...}`)
and our sampling per row. It returns Completions in request order, so the runner's
parsing, repair, failure rows and cache are exactly those of every other engine; its
identity (backend "vllm", the model) equals the in-process vLLM engine's, so cache
entries are shared between the two.

vLLM reports no finish reason through the processor; an answer that used all of
`max_tokens` is marked `length` (the runner's repair then gets twice the room).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Sequence
from typing import Any

from cxrctx.errors import CxrctxError
from cxrctx.llm.base import ChatRequest, Completion, Sampling
from cxrctx.llm.spec import EngineSpec

VLLM_RAY_HINT = (
    "the vllm backend on Ray needs vLLM and ray.data.llm: pip install 'cxrctx[ray,vllm]' on "
    "GPU nodes, or vLLM's CPU build beside ray[data] (see make setup-vllm)"
)

#: CPUs reserved on a cluster without GPUs by each of ray.data.llm's light CPU stages (chat
#: template, tokenize, detokenize: one actor each) and by our pre/postprocess map tasks
CPU_STAGE_CPUS = 0.2
CPU_MAP_CPUS = 0.1


def _llm_api() -> Any:
    try:
        import ray.data.llm as llm_api
    except ImportError as e:
        raise CxrctxError(VLLM_RAY_HINT) from e
    return llm_api


def cluster_has_gpus() -> bool:
    """Whether the connected (or local) Ray cluster offers GPUs: the replicas run there, so
    the platform is the cluster's, not the driver's."""
    import ray

    return bool(ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0)


def replica_kwargs(spec: EngineSpec, gpu: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """(vLLM engine kwargs, replica env vars) of `spec`: the in-process engine's checks and
    platform split (`vllm_engine.engine_args`), usage statistics off on every replica."""
    from cxrctx.llm.vllm_engine import disable_usage_stats, engine_args

    disable_usage_stats()
    try:
        import vllm
    except ImportError:
        vllm = None  # a driver for GPU nodes need not hold vLLM: the common names are checked
    args, env = engine_args(vllm, spec.model, spec.options, gpu)
    args.pop("model")
    return args, {**disable_usage_stats({}), **env}


def processor_config(
    spec: EngineSpec, workers: int, batch_size: int = 64, gpu: bool | None = None
) -> Any:
    """The `vLLMEngineProcessorConfig` of `spec`: `workers` replicas, our engine options.

    On GPUs each replica takes `tensor_parallel_size` GPUs (ray.data.llm's default
    placement). Without GPUs each replica is one CPU bundle, in eager mode, without
    engine-metrics logging (that imports ray.serve, absent beside vLLM's CPU build), and the
    processor's light CPU stages (chat template, tokenize, detokenize: one actor each, one
    whole CPU each by Ray's default) reserve `CPU_STAGE_CPUS` of a CPU: on a 2-CPU node three
    whole-CPU stage actors left no CPU for the vLLM bundle, and the pipeline waited forever
    (`map_kwargs` does the same for the pre/postprocess tasks)."""
    if spec.backend != "vllm":
        raise CxrctxError(f"the vLLM processor runs the vllm backend, not {spec.backend}")
    api = _llm_api()
    gpu = cluster_has_gpus() if gpu is None else gpu
    kwargs, env = replica_kwargs(spec, gpu)
    extra: dict[str, Any] = {}
    if not gpu:
        stage = {"num_cpus": CPU_STAGE_CPUS}
        extra = {
            "placement_group_config": {"bundles": [{"CPU": 1}]},
            "log_engine_metrics": False,
            "chat_template_stage": dict(stage),
            "tokenize_stage": dict(stage),
            "detokenize_stage": dict(stage),
        }
    return api.vLLMEngineProcessorConfig(
        model_source=spec.model,
        engine_kwargs=kwargs,
        concurrency=workers,
        batch_size=batch_size,
        runtime_env={"env_vars": env},
        **extra,
    )


def cpu_need(workers: int) -> float:
    """CPUs one processor pass reserves without GPUs: a whole CPU per vLLM replica, the three
    light stage actors, and one pre- and one postprocess task at a time."""
    return workers + 3 * CPU_STAGE_CPUS + 2 * CPU_MAP_CPUS


def check_cpu_capacity(workers: int) -> None:
    """A one-line error, not a pipeline that waits forever, where the connected cluster
    cannot hold `workers` CPU replicas and the processor's stages at once."""
    import ray

    if not ray.is_initialized():
        return
    have = float(ray.cluster_resources().get("CPU", 0))
    need = cpu_need(workers)
    if have < need:
        fit = max(0, int(have - cpu_need(0)))
        hint = f"use --workers {fit} or fewer" if fit else "give the cluster more CPUs"
        raise CxrctxError(
            f"vLLM on Ray without GPUs: {workers} replica(s) need {need:g} CPUs (one each, "
            f"plus {cpu_need(0):g} for the processor's stages) but the cluster has {have:g}; "
            + hint
        )


def map_kwargs(gpu: bool) -> dict[str, Any]:
    """`Dataset.map` resources of our pre/postprocess steps: Ray's default (one CPU per task)
    on GPU nodes, `CPU_MAP_CPUS` where the vLLM replicas themselves hold the CPUs."""
    return {} if gpu else {"num_cpus": CPU_MAP_CPUS}


def preprocess(row: dict[str, Any], sampling: dict[str, Any]) -> dict[str, Any]:
    """One dataset row → the processor's input: chat messages + per-row sampling params."""
    params: dict[str, Any] = {
        "temperature": sampling["temperature"],
        "top_p": sampling["top_p"],
        "max_tokens": sampling["max_tokens"],
    }
    if sampling.get("seed") is not None:
        params["seed"] = sampling["seed"]
    # the schema stays a JSON string (vLLM takes one): as a nested dict Arrow would unify
    # the schemas of all rows into one struct, and a key one schema lacks becomes null
    params["structured_outputs"] = {"json": row["schema"]} if row.get("schema") else None
    return {"i": row["i"], "messages": json.loads(row["messages"]), "sampling_params": params}


def postprocess(row: dict[str, Any]) -> dict[str, Any]:
    """The processor's output row → what a Completion needs (and the request index)."""
    return {
        "i": int(row["i"]),
        "text": str(row.get("generated_text") or ""),
        "prompt_tokens": int(row.get("num_input_tokens") or 0),
        "completion_tokens": int(row.get("num_generated_tokens") or 0),
    }


def request_rows(requests: Sequence[ChatRequest]) -> list[dict[str, Any]]:
    """Requests as flat dataset rows (JSON strings keep the Arrow schema simple)."""
    return [
        {
            "i": i,
            "messages": json.dumps(r.messages),
            "schema": json.dumps(r.json_schema) if r.json_schema is not None else "",
        }
        for i, r in enumerate(requests)
    ]


def completions(
    rows: list[dict[str, Any]], n: int, max_tokens: int, seconds: float
) -> list[Completion]:
    """Completions in request order; a request with no output row is a transient failure."""
    by_i = {r["i"]: r for r in rows}
    out = []
    for i in range(n):
        r = by_i.get(i)
        if r is None:
            out.append(
                Completion(
                    "", "error", error="no output from the vLLM processor", error_kind="transient"
                )
            )
            continue
        finish = "length" if r["completion_tokens"] >= max_tokens else "stop"
        out.append(
            Completion(
                r["text"],
                finish,
                r["prompt_tokens"],
                r["completion_tokens"],
                latency_s=seconds / max(1, n),
            )
        )
    return out


class ProcessorEngine:
    """An Engine whose `complete` runs one `ray.data.llm` vLLM processor pass."""

    def __init__(self, spec: EngineSpec, workers: int = 1, batch_size: int = 64):
        self.spec = spec
        self.backend = "vllm"
        self.model = spec.model
        self.default_batch_size = 2048
        self.gpu = cluster_has_gpus()
        if not self.gpu:
            check_cpu_capacity(workers)
        self.config = processor_config(spec, workers, batch_size, gpu=self.gpu)

    def complete(self, requests: Sequence[ChatRequest], sampling: Sampling) -> list[Completion]:
        import ray

        if not requests:
            return []
        api = _llm_api()
        t0 = time.perf_counter()
        processor = api.build_processor(
            self.config,
            preprocess=functools.partial(preprocess, sampling=sampling.as_dict()),
            postprocess=postprocess,
            preprocess_map_kwargs=map_kwargs(self.gpu),
            postprocess_map_kwargs=map_kwargs(self.gpu),
        )
        ds = processor(ray.data.from_items(request_rows(requests)))
        rows = ds.take_all()  # postprocess keeps only the four columns a Completion needs
        return completions(rows, len(requests), sampling.max_tokens, time.perf_counter() - t0)

    def close(self) -> None:
        pass
