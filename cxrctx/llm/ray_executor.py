"""`RayExecutor`: the runner's batches on Ray Data actors, each holding its own engine.

The driver keeps everything that must happen exactly once and in order: planning
(pre-pass, de-duplication, cache look-ups), the cache, the output shards and the
manifest. Workers only solve: each batch of Work becomes one row of a `ray.data`
dataset (one block, so a batch is the unit of scheduling and of retry), `map_batches`
runs it through `solve_batch` in an actor class that builds ONE engine per worker from
the EngineSpec (`num_gpus=1` per vLLM actor, one CPU per llamacpp/openai/fake actor,
`concurrency` = workers), and the Outcomes come back to the driver, which yields them
in batch order. Hence the same rows, cache entries and bytes as `LocalExecutor`.

Fault tolerance: Ray Data restarts a dead actor and retries its task; the driver keeps
the first result of each batch index and ignores a repeat, and a batch that never
returns is an error, so nothing is lost or doubled. A killed driver loses at most the
batches it had not committed to the cache; a re-run asks only for those.

Batches are pulled from the runner in windows (`window` batches, one dataset each), so
planning and memory stay bounded on a 228k-report input; each window starts its actors
once (a model load per window per worker).

With the vLLM backend (default `vllm_processor=True`) each window goes through
`ray.data.llm`'s vLLM processor instead (`vLLMEngineProcessorConfig`, `build_processor`);
our prompts, JSON schemas (as vLLM structured outputs), parsing, repair and cache stay
the same because `solve_batch` runs on the driver with the processor as its engine.

A local Ray started here is stopped when the driver dies, even by SIGKILL (which skips
`ray.shutdown`): `cxrctx.llm.ray_watchdog` watches the driver and stops that session.

Secrets: the API key is never in the dataset, the actor arguments or a log. Workers of
a Ray started here inherit this process's environment; on an existing cluster
(`address`) the key's variable reaches the actors through their `runtime_env`.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import subprocess
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from cxrctx.errors import CxrctxError
from cxrctx.llm import _check, ray_watchdog
from cxrctx.llm.base import ChatRequest, Completion, Engine, Sampling
from cxrctx.llm.runner import Outcome, Work, engine_identity, engine_secrets, solve_batch
from cxrctx.llm.spec import EngineSpec, check_route, make_engine
from cxrctx.llm.task import Task

log = logging.getLogger(__name__)

RAY_HINT = "the ray executor needs Ray Data: pip install 'cxrctx[ray]'"
DEFAULT_WINDOW = 1024
#: default batch sizes of the engines, known without building them
_BATCH = {"llamacpp": 8, "vllm": 2048, "fake": 64}


def _session_dir(ray: Any) -> str:
    """The folder of the local Ray session just started ("" when Ray hides it)."""
    node = getattr(getattr(ray, "_private", None), "worker", None)
    node = getattr(node, "_global_node", None)
    try:
        return str(node.get_session_dir_path()) if node is not None else ""
    except Exception:  # a private API: never fail a run over the watchdog
        return ""


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise CxrctxError(RAY_HINT) from e
    return ray


class SpecEngine:
    """The driver's stand-in for the engine that `spec` builds on the workers: its
    identity (backend, model, base URL enter every cache key), default batch size and
    secrets, without loading a model on the driver. It never completes anything."""

    def __init__(self, spec: EngineSpec):
        _check_options(spec)  # option errors before any worker starts
        if spec.backend == "openai":
            if not spec.base_url:
                raise CxrctxError("the openai backend needs an explicit --base-url")
            check_route(spec.base_url, spec.allow_public_api)
        self.spec = spec
        self.backend: str = spec.backend
        self.model = str(Path(spec.model)) if spec.backend == "llamacpp" else spec.model
        if spec.backend == "openai":
            self.base_url = spec.base_url
            self.default_batch_size = max(64, 32 * int(spec.options.get("concurrency", 8)))
        else:
            self.default_batch_size = _BATCH[spec.backend]

    def secrets(self) -> list[str]:
        if self.backend != "openai":
            return []
        key = os.environ.get(self.spec.api_key_env)
        return [key] if key else []

    def complete(self, requests: Sequence[ChatRequest], sampling: Sampling) -> list[Completion]:
        raise RuntimeError("SpecEngine only describes the engine; the Ray workers run it")

    def close(self) -> None:
        pass


def _check_options(spec: EngineSpec) -> None:
    """The option names `get_engine` would refuse, refused here (no backend library loaded)."""
    classes = {
        "llamacpp": ("cxrctx.llm.llamacpp", "LlamaCppEngine"),
        "openai": ("cxrctx.llm.openai_compat", "OpenAIEngine"),
        "vllm": ("cxrctx.llm.vllm_engine", "VllmEngine"),
        "fake": ("cxrctx.llm.fake", "FakeEngine"),
    }
    module, name = classes[spec.backend]
    mod = importlib.import_module(module)
    if spec.backend == "vllm":  # vLLM's own EngineArgs (or the common ones without vLLM here)
        try:
            vllm = mod.import_vllm()
        except CxrctxError:
            vllm = None
        known, _ = mod.engine_arg_names(vllm)
        allowed = tuple(sorted(known | set(mod.OWN_OPTIONS)))
    else:
        allowed = getattr(mod, name).OPTIONS
    opts = {k: v for k, v in spec.engine_options().items() if v is not None}
    _check(spec.backend, opts, allowed)


def _spec_factory(spec: EngineSpec) -> Engine:
    return make_engine(spec)


class _Solver:
    """Ray Data actor: one engine per worker; rows (b, pickled Work list) → (b, Outcomes).

    An engine that cannot be built, or whose identity differs from the driver's (the
    cache keys would not match), fails the run with that message on the first batch."""

    def __init__(self, task_blob: bytes, factory_blob: bytes, sampling: Sampling, expected: dict):
        from ray import cloudpickle

        self.sampling = sampling
        self.error: str | None = None
        try:
            self.task = cloudpickle.loads(task_blob)
            self.engine = cloudpickle.loads(factory_blob)()
        except Exception as e:
            self.error = f"the worker could not build its engine: {type(e).__name__}: {e}"
            return
        ident = engine_identity(self.engine)
        if ident != expected:
            self.error = f"the worker's engine is {ident}, the driver expected {expected}"
        self.secrets = engine_secrets(self.engine)

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa
        from ray import cloudpickle

        if self.error is not None:
            raise CxrctxError(self.error)
        outs = []
        for blob in batch["works"].to_pylist():
            works = cloudpickle.loads(blob)
            outcomes = solve_batch(self.task, self.engine, self.sampling, works, self.secrets)
            outs.append(cloudpickle.dumps(outcomes))
        return pa.table({"b": batch["b"], "outcomes": pa.array(outs, pa.binary())})


def _root_message(e: BaseException) -> str:
    """The message of the CxrctxError inside a Ray error, or a one-line summary."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, CxrctxError):
            return str(seen)
        cause = getattr(seen, "cause", None)
        seen = cause if isinstance(cause, BaseException) else (seen.__cause__ or seen.__context__)
    text = str(e).strip().splitlines()
    for line in reversed(text):
        if "CxrctxError:" in line:
            return line.split("CxrctxError:", 1)[1].strip()
    return f"{type(e).__name__}: {(text[-1] if text else '')[:300]}"


class RayExecutor:
    """Runs `solve_batch` on `workers` Ray Data actors (see the module docstring).

    The engine is built on each worker from the driver engine's `spec` (a `SpecEngine`,
    see `driver_engine`) or, for tests and the Python API, from `engine_factory` (a
    picklable callable returning an Engine with the same identity as the driver's)."""

    def __init__(
        self,
        workers: int = 1,
        *,
        address: str | None = None,
        engine_factory: Callable[[], Engine] | None = None,
        window: int = DEFAULT_WINDOW,
        vllm_processor: bool = True,
        num_cpus: float | None = None,
    ):
        if workers < 1:
            raise CxrctxError("--workers must be >= 1")
        self.workers = workers
        self.address = address
        self.engine_factory = engine_factory
        self.window = max(1, window)
        self.vllm_processor = vllm_processor
        self.num_cpus = num_cpus
        self._started = False
        self._watchdog: subprocess.Popen | None = None

    # -- life cycle

    def driver_engine(self, spec: EngineSpec) -> Engine:
        """What `run_task` gets on the driver: the spec's identity, no model loaded."""
        return SpecEngine(spec)

    def start(self) -> None:
        """Connect to `address`, or start a local Ray sized for the workers."""
        ray = _ray()
        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.WARNING,
        }
        if self.address:
            ray.init(address=self.address, **kwargs)
        else:
            ray.init(num_cpus=max(os.cpu_count() or 1, self.workers), **kwargs)
            self._started = True
            self._watchdog = ray_watchdog.start(_session_dir(ray))
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # our progress is the runner's

    def close(self) -> None:
        """Shut down the Ray this executor started (a connected cluster stays up)."""
        if self._started:
            _ray().shutdown()
            self._started = False
            ray_watchdog.finish(self._watchdog)
            self._watchdog = None

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the protocol

    def map_batches(
        self,
        task: Task[Any, Any],
        engine: Engine,
        sampling: Sampling,
        batches: Iterable[list[Work[Any]]],
        secrets: Sequence[str],
    ) -> Iterator[list[Outcome]]:
        spec: EngineSpec | None = getattr(engine, "spec", None)
        if self.engine_factory is None and spec is None:
            raise CxrctxError(
                "the ray executor builds one engine per worker: pass an EngineSpec "
                "(engine=EngineSpec(...)) or RayExecutor(engine_factory=...)"
            )
        self.start()
        use_processor = (
            self.engine_factory is None and spec is not None and spec.backend == "vllm"
        ) and self.vllm_processor
        it = iter(batches)
        while True:
            window = [b for _, b in zip(range(self.window), it, strict=False)]
            if not window:
                return
            if use_processor:
                assert spec is not None
                yield from self._processor_window(task, spec, sampling, window, secrets)
            else:
                yield from self._actor_window(task, engine, spec, sampling, window)

    def _remote_args(self, spec: EngineSpec | None) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if spec is not None and spec.backend == "vllm":
            args["num_gpus"] = int(spec.options.get("tensor_parallel_size", 1))
        else:
            args["num_cpus"] = self.num_cpus if self.num_cpus is not None else 1
        key = spec.api_key_env if spec is not None and spec.backend == "openai" else None
        if key and self.address and os.environ.get(key):
            args["runtime_env"] = {"env_vars": {key: os.environ[key]}}
        return args

    def _actor_window(
        self,
        task: Task[Any, Any],
        engine: Engine,
        spec: EngineSpec | None,
        sampling: Sampling,
        window: list[list[Work[Any]]],
    ) -> Iterator[list[Outcome]]:
        ray = _ray()
        from ray import cloudpickle

        todo = [i for i, works in enumerate(window) if works]
        done: dict[int, list[Outcome]] = {i: [] for i, w in enumerate(window) if not w}
        if todo:
            factory = self.engine_factory
            if factory is None:
                assert spec is not None
                factory = functools.partial(_spec_factory, spec)
            rows = [{"b": i, "works": cloudpickle.dumps(window[i])} for i in todo]
            ds = ray.data.from_items(rows, override_num_blocks=len(rows))
            ds = ds.map_batches(
                _Solver,
                batch_size=None,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=min(self.workers, len(rows))),
                fn_constructor_kwargs={
                    "task_blob": cloudpickle.dumps(task),
                    "factory_blob": cloudpickle.dumps(factory),
                    "sampling": sampling,
                    "expected": engine_identity(engine),
                },
                **self._remote_args(spec),
            )
            results = self._iter_outcomes(ds)
        else:
            results = iter(())
        yield from _in_order(len(window), done, results)

    def _iter_outcomes(self, ds: Any) -> Iterator[tuple[int, list[Outcome]]]:
        from ray import cloudpickle

        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                for b, blob in zip(
                    batch["b"].to_pylist(), batch["outcomes"].to_pylist(), strict=True
                ):
                    yield int(b), cloudpickle.loads(blob)
        except CxrctxError:
            raise
        except Exception as e:
            raise CxrctxError(f"ray executor: {_root_message(e)}") from e

    def _processor_window(
        self,
        task: Task[Any, Any],
        spec: EngineSpec,
        sampling: Sampling,
        window: list[list[Work[Any]]],
        secrets: Sequence[str],
    ) -> Iterator[list[Outcome]]:
        from cxrctx.llm.ray_vllm import ProcessorEngine

        flat = [w for works in window for w in works]
        engine = ProcessorEngine(spec, workers=self.workers)
        outcomes = solve_batch(task, engine, sampling, flat, secrets)
        start = 0
        for works in window:
            yield outcomes[start : start + len(works)]
            start += len(works)


def _in_order(
    n: int, done: dict[int, list[Outcome]], results: Iterator[tuple[int, list[Outcome]]]
) -> Iterator[list[Outcome]]:
    """Yield the outcomes of batches 0..n-1 in order as they arrive; the first result of
    a batch index wins (a retried task never doubles a batch), a missing one is an error."""
    nxt = 0
    for b, outcomes in results:
        if b in done or b < nxt:
            log.debug("ray executor: ignored a repeated result of batch %d", b)
            continue
        done[b] = outcomes
        while nxt in done:
            yield done.pop(nxt)
            nxt += 1
    while nxt in done:
        yield done.pop(nxt)
        nxt += 1
    if nxt != n:
        raise CxrctxError(f"ray executor: batch {nxt} of {n} never came back from the workers")
