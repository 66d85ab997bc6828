"""`run_task`: one runner for every LLM task (batching, de-duplication, cache, repair,
failure rows, progress, token counts), so every task has the same failure policy:

- identical requests are sent once; finished answers (and final failures) are appended
  to the content-hash cache after every batch, keyed by task, backend, model, base URL,
  prompt and schema sha256, sampling and the request itself;
- an unusable answer gets ONE repair request (the task decides what it says), then
  becomes a failure row with the reason, the attempt count and the raw text (scrubbed of
  the API key, capped at `RAW_TEXT_MAX_CHARS`); never a silent default;
- a transient engine error (5xx, 429, timeout, refused connection, malformed body) is a
  failure of this run only: it is not cached, so a re-run asks again;
- a permanent error (401/403/404) stops the run with a one-line CxrctxError after the
  first such answer instead of sending every remaining item to a server that refuses;
- results stream to `on_batch` after every batch, in item order, so callers write
  output per batch and memory stays flat.

Work is sent through an `Executor`; `LocalExecutor` calls the engine in this process.
An executor that runs batches elsewhere (e.g. Ray actors, each holding its own engine)
only has to implement `map_batches` with `solve_batch` on its workers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol

from pydantic import ValidationError

from cxrctx.errors import CxrctxError
from cxrctx.llm.base import ChatRequest, Completion, Engine, Sampling
from cxrctx.llm.cache import ResultCache, cache_key
from cxrctx.llm.spec import make_engine
from cxrctx.llm.task import AnswerError, AnswerT, ItemT, Task

log = logging.getLogger(__name__)

#: stored raw answers (cache, documents, failures) are cut to this many characters
RAW_TEXT_MAX_CHARS = 16_384
REDACTED = "[REDACTED]"


def cap_text(text: str | None, limit: int = RAW_TEXT_MAX_CHARS) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f"...[cut: {len(text) - limit} more characters not stored]"


def scrub(text: str | None, secrets: Sequence[str]) -> str | None:
    """`text` with every secret replaced (a server may echo the API key back)."""
    if not text:
        return text
    for s in secrets:
        if s and s in text:
            text = text.replace(s, REDACTED)
    return text


def engine_secrets(engine: Any) -> list[str]:
    fn = getattr(engine, "secrets", None)
    return [s for s in (fn() if callable(fn) else []) if s]


def engine_identity(engine: Any) -> dict[str, Any]:
    """What identifies the answers of an engine: backend, model, base URL."""
    return {
        "backend": str(getattr(engine, "backend", "?")),
        "model": str(getattr(engine, "model", "?")),
        "base_url": getattr(engine, "base_url", None),
    }


def sampling_json(sampling: Sampling) -> str:
    return json.dumps(sampling.as_dict(), sort_keys=True, separators=(",", ":"))


def request_fingerprint(req: ChatRequest) -> str:
    """sha256 of a request's messages and schema (hashing the long system prompt directly
    is far cheaper than serialising it into the cache key's JSON)."""
    h = hashlib.sha256()
    for m in req.messages:
        for part in (m.get("role", ""), m.get("content", "")):
            data = str(part).encode("utf-8")
            h.update(len(data).to_bytes(8, "little") + data)
    h.update(json.dumps(req.json_schema, sort_keys=True, separators=(",", ":")).encode())
    if req.choices:
        h.update(("choices:" + "\x1f".join(req.choices)).encode())
    return h.hexdigest()


def default_batch_size(engine: Any) -> int:
    return int(getattr(engine, "default_batch_size", 16) or 16)


# ---------------------------------------------------------------------------- results


@dataclass
class TaskResult(Generic[ItemT, AnswerT]):
    """The outcome for one item. `answer` is None exactly when `error` is set."""

    item: ItemT
    answer: AnswerT | None
    error: str | None = None
    attempts: int = 0
    called: bool = False  # the answer came from the model (now or from the cache)
    cached: bool = False
    transient: bool = False  # a failure a re-run retries (not cached)
    duplicate: bool = False  # shares the answer of an identical earlier request
    raw_text: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0


@dataclass
class TaskProgress:
    done: int
    total: int | None
    requests: int
    tokens: int
    cached: int
    failed: int
    #: what the run is doing when it is not counting documents (e.g. "writing shards"),
    #: so a progress display shows the phase rather than a frozen bar and a stale ETA
    phase: str = ""


@dataclass
class TaskStats:
    """Counts of one run; `requests` includes repair requests."""

    task: str
    items: int = 0
    local: int = 0
    cached: int = 0
    unique_requests: int = 0
    requests: int = 0
    repairs: int = 0
    answered: int = 0
    failed: int = 0
    transient: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    batches: int = 0
    seconds: float = 0.0
    batch_size: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)

    def add(self, r: TaskResult[Any, Any]) -> None:
        self.items += 1
        self.answered += r.error is None
        self.failed += r.error is not None
        self.transient += r.transient
        self.cached += r.cached
        self.local += not r.called and r.attempts == 0 and not r.cached


# ---------------------------------------------------------------------------- one batch


@dataclass
class Work(Generic[ItemT]):
    key: str
    item: ItemT
    request: ChatRequest


@dataclass
class Outcome:
    """What a worker returns for one Work: the cache entry and how to treat a failure."""

    key: str
    entry: dict[str, Any]
    answer: Any = None
    transient: bool = False
    permanent: bool = False
    requests: int = 1


def _safe_complete(engine: Engine, reqs: list[ChatRequest], sampling: Sampling) -> list[Completion]:
    """engine.complete that never raises for a broken engine answer (a bug there is a
    transient failure of each request, not a crash of the whole run)."""
    try:
        out = list(engine.complete(reqs, sampling))
    except CxrctxError:
        raise
    except Exception as e:
        err = f"engine raised {type(e).__name__}: {str(e)[:300]}"
        return [Completion("", "error", error=err, error_kind="transient") for _ in reqs]
    if len(out) != len(reqs):
        err = f"engine returned {len(out)} completions for {len(reqs)} requests"
        return [Completion("", "error", error=err, error_kind="transient") for _ in reqs]
    return out


def _judge(
    task: Task[Any, Any], item: Any, c: Completion, secrets: Sequence[str]
) -> tuple[Any, str | None, str | None]:
    """(answer, reason, error kind) of one completion; kind None = an answer problem."""
    if c.finish_reason == "error" or c.error:
        return (
            None,
            f"engine error: {scrub(c.error or 'unknown', secrets)}",
            c.error_kind or "transient",
        )
    try:
        return task.parse(item, scrub(c.text, secrets) or "", c.finish_reason), None, None
    except AnswerError as e:
        return None, scrub(e.reason, secrets), None


def _entry(
    task_name: str, w: Work[Any], comps: list[Completion], secrets: Sequence[str]
) -> dict[str, Any]:
    last = comps[-1]
    return {
        "key": w.key,
        "task": task_name,
        "status": "failed",
        "answer": None,
        "error": None,
        "raw_text": cap_text(scrub(last.text, secrets)),
        "finish_reason": last.finish_reason,
        "prompt_tokens": sum(c.prompt_tokens for c in comps),
        "completion_tokens": sum(c.completion_tokens for c in comps),
        "latency_s": round(sum(c.latency_s for c in comps), 6),
        "attempts": len(comps),
    }


def solve_batch(
    task: Task[Any, Any],
    engine: Engine,
    sampling: Sampling,
    works: list[Work[Any]],
    secrets: Sequence[str] = (),
) -> list[Outcome]:
    """Ask the engine for every Work, repair each unusable answer once; one Outcome each."""
    if not works:
        return []
    first = _safe_complete(engine, [w.request for w in works], sampling)
    outcomes: list[Outcome] = []
    retry: list[tuple[int, ChatRequest, str]] = []
    for i, (w, c) in enumerate(zip(works, first, strict=True)):
        answer, reason, kind = _judge(task, w.item, c, secrets)
        o = Outcome(w.key, _entry(task.name, w, [c], secrets), answer)
        _settle(o, answer, reason, kind, task)
        outcomes.append(o)
        if reason is not None and kind is None:
            rep = task.repair(w.item, w.request, scrub(c.text, secrets) or "", reason)
            if rep is not None:
                retry.append((i, rep, reason))
    if retry and not any(o.permanent for o in outcomes):
        # a truncated answer gets room to finish on its repair attempt
        s2 = dataclasses.replace(sampling, max_tokens=sampling.max_tokens * 2)
        second = _safe_complete(engine, [r for _, r, _ in retry], s2)
        for (i, _, why), c in zip(retry, second, strict=True):
            w = works[i]
            answer, reason, kind = _judge(task, w.item, c, secrets)
            o = Outcome(w.key, _entry(task.name, w, [first[i], c], secrets), answer, requests=2)
            if reason is not None:
                reason = f"{reason} (after repair; first: {why})"
            _settle(o, answer, reason, kind, task)
            outcomes[i] = o
    return outcomes


def _settle(o: Outcome, answer: Any, reason: str | None, kind: str | None, task: Task) -> None:
    if reason is None:
        o.entry.update(status="answered", answer=task.dump_answer(answer))
    else:
        o.entry.update(status="failed", error=reason)
        o.transient = kind == "transient"
        o.permanent = kind == "permanent"


# ---------------------------------------------------------------------------- executors


class Executor(Protocol):
    """Runs `solve_batch` over batches of Work and yields the Outcomes in batch order."""

    def map_batches(
        self,
        task: Task[Any, Any],
        engine: Engine,
        sampling: Sampling,
        batches: Iterable[list[Work[Any]]],
        secrets: Sequence[str],
    ) -> Iterator[list[Outcome]]: ...


class LocalExecutor:
    """Every batch in this process, one after another, with the caller's engine."""

    def map_batches(
        self,
        task: Task[Any, Any],
        engine: Engine,
        sampling: Sampling,
        batches: Iterable[list[Work[Any]]],
        secrets: Sequence[str],
    ) -> Iterator[list[Outcome]]:
        for works in batches:
            yield solve_batch(task, engine, sampling, works, secrets)


def driver_engine(executor: Executor | None, spec: Any) -> Engine:
    """The engine `run_task` gets for an EngineSpec: built here for the local executor;
    for an executor whose workers build their own (Ray), its stand-in with the same
    identity and no model loaded (`executor.driver_engine(spec)`)."""
    fn = getattr(executor, "driver_engine", None)
    if callable(fn):
        return fn(spec)

    return make_engine(spec)


# ---------------------------------------------------------------------------- the run


@dataclass
class _Plan:
    """One batch of items: results known before the engine (local, cached) and the Work."""

    items: list[Any]
    results: list[TaskResult[Any, Any] | None]
    slots: dict[str, list[int]]
    works: list[Work[Any]]
    # slots whose request an earlier, not yet committed batch sends (executors that
    # plan ahead): resolved from the cache at commit, as if planned after that batch
    deferred: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class _Ctx:
    task: Task[Any, Any]
    cache: ResultCache
    sampling: Sampling
    key_parts: dict[str, Any]
    # keys of Work planned but not committed -> how many later batches wait for them
    inflight: dict[str, int] = field(default_factory=dict)
    # uncached (transient/permanent) results that later batches wait for
    settled: dict[str, tuple[TaskResult, int]] = field(default_factory=dict)


def _result_from_entry(task: Task, item: Any, e: dict[str, Any], cached: bool) -> TaskResult:
    answer = task.load_answer(item, e["answer"]) if e["status"] == "answered" else None
    return TaskResult(
        item=item,
        answer=answer,
        error=e.get("error") if answer is None else None,
        attempts=int(e.get("attempts", 0)),
        called=True,
        cached=cached,
        raw_text=e.get("raw_text"),
        finish_reason=e.get("finish_reason"),
        prompt_tokens=int(e.get("prompt_tokens", 0)),
        completion_tokens=int(e.get("completion_tokens", 0)),
        latency_s=float(e.get("latency_s", 0.0)),
    )


def _cached(ctx: _Ctx, item: Any, key: str) -> TaskResult | None:
    e = ctx.cache.get(key)
    if e is None or e.get("status") not in ("answered", "failed"):
        return None
    try:
        return _result_from_entry(ctx.task, item, e, cached=True)
    except (ValidationError, KeyError, TypeError):
        return None  # a stale or foreign entry: ask again


def _plan(ctx: _Ctx, items: list[Any]) -> _Plan:
    plan = _Plan(items, [None] * len(items), {}, [])
    for i, item in enumerate(items):
        try:
            local = ctx.task.local_answer(item)
        except AnswerError as e:
            plan.results[i] = TaskResult(item, None, error=e.reason)
            continue
        if local is not None:
            plan.results[i] = TaskResult(item, local)
            continue
        req = ctx.task.request(item)
        key = cache_key(request=request_fingerprint(req), **ctx.key_parts)
        if key in plan.slots:
            plan.slots[key].append(i)
            continue
        hit = _cached(ctx, item, key)
        if hit is not None:
            plan.results[i] = hit
            plan.slots[key] = [i]
            continue
        plan.slots[key] = [i]
        if key in ctx.inflight:
            ctx.inflight[key] += 1
            plan.deferred.append((i, key))
            continue
        ctx.inflight[key] = 0
        plan.works.append(Work(key, item, dataclasses.replace(req, key=key)))
    return plan


def _commit(ctx: _Ctx, plan: _Plan, outcomes: list[Outcome], stats: TaskStats) -> list[TaskResult]:
    """Cache final outcomes, fill every slot (duplicates share their first item's result)."""
    if len(outcomes) != len(plan.works):
        raise RuntimeError(
            f"executor returned {len(outcomes)} outcomes for {len(plan.works)} works"
        )
    ctx.cache.put_many([o.entry for o in outcomes if not o.transient and not o.permanent])
    for w, o in zip(plan.works, outcomes, strict=True):
        stats.requests += o.requests
        stats.repairs += o.requests - 1
        r = _result_from_entry(ctx.task, w.item, o.entry, cached=False)
        r.answer = o.answer if o.answer is not None else r.answer
        r.transient = o.transient
        plan.results[plan.slots[w.key][0]] = r
        waiting = ctx.inflight.pop(w.key, 0)
        if waiting and (o.transient or o.permanent):
            ctx.settled[w.key] = (r, waiting)
    for i, key in plan.deferred:
        plan.results[i] = _resolve_deferred(ctx, plan.items[i], key)
    for idxs in plan.slots.values():
        first = plan.results[idxs[0]]
        assert first is not None
        for j in idxs[1:]:
            plan.results[j] = dataclasses.replace(first, item=plan.items[j], duplicate=True)
    stats.unique_requests += len(plan.slots)
    done = [r for r in plan.results if r is not None]
    assert len(done) == len(plan.items)
    return done


def _resolve_deferred(ctx: _Ctx, item: Any, key: str) -> TaskResult:
    """The result of a request an earlier batch sent: from the cache, like a later plan
    would find it, or that batch's uncached failure (a re-run retries it)."""
    hit = _cached(ctx, item, key)
    if hit is not None:
        return hit
    r, waiting = ctx.settled.pop(key)
    if waiting > 1:
        ctx.settled[key] = (r, waiting - 1)
    return dataclasses.replace(r, item=item, duplicate=True)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    buf: list[Any] = []
    for it in items:
        buf.append(it)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def _permanent_error(outcomes: list[Outcome], engine: Any) -> CxrctxError | None:
    bad = next((o for o in outcomes if o.permanent), None)
    if bad is None:
        return None
    ident = engine_identity(engine)
    where = ident["base_url"] or ident["backend"]
    why = " ".join(str(bad.entry["error"]).split())[:400]
    return CxrctxError(
        f"{where} refused the request for model {ident['model']!r}: {why}; "
        "stopped after the first such answer (check --model, --base-url and the key in --api-key-env)"
    )


def run_task(
    task: Task[ItemT, AnswerT],
    items: Iterable[ItemT],
    engine: Engine,
    *,
    cache: ResultCache | None = None,
    sampling: Sampling | None = None,
    executor: Executor | None = None,
    batch_size: int | None = None,
    on_batch: Callable[[list[TaskResult[ItemT, AnswerT]]], None] | None = None,
    progress: Callable[[TaskProgress], None] | None = None,
    total: int | None = None,
) -> TaskStats:
    """Answer every item of `items` with `engine`; results go to `on_batch` per batch."""
    t0 = time.perf_counter()
    sampling = sampling or Sampling()
    cache = cache if cache is not None else ResultCache(None)
    executor = executor or LocalExecutor()
    size = batch_size or default_batch_size(engine)
    ident = engine_identity(engine)
    key_parts = {
        "task": task.name,
        "prompt_sha256": task.prompt_sha256,
        "schema_sha256": task.schema_sha256,
        "sampling": sampling.as_dict(),
        **ident,
    }
    ctx = _Ctx(task, cache, sampling, key_parts)
    stats = TaskStats(
        task=task.name,
        batch_size=size,
        provenance={
            **ident,
            "prompt_sha256": task.prompt_sha256,
            "schema_sha256": task.schema_sha256,
            "sampling": sampling_json(sampling),
        },
    )
    if total is None and isinstance(items, Sequence):
        total = len(items)
    plans: deque[_Plan] = deque()

    def planned() -> Iterator[list[Work[Any]]]:
        for chunk in _chunks(items, size):
            plan = _plan(ctx, chunk)
            plans.append(plan)
            yield plan.works

    if progress:
        progress(TaskProgress(0, total, 0, 0, 0, 0))
    secrets = engine_secrets(engine)
    for outcomes in executor.map_batches(task, engine, sampling, planned(), secrets):
        plan = plans.popleft()
        results = _commit(ctx, plan, outcomes, stats)
        stats.batches += 1
        for r in results:
            stats.add(r)
            if not r.cached and not r.duplicate:
                stats.prompt_tokens += r.prompt_tokens
                stats.completion_tokens += r.completion_tokens
        if on_batch:
            on_batch(results)
        err = _permanent_error(outcomes, engine)
        if err is not None:
            raise err
        if progress:
            tokens = stats.prompt_tokens + stats.completion_tokens
            progress(
                TaskProgress(stats.items, total, stats.requests, tokens, stats.cached, stats.failed)
            )
    stats.seconds = round(time.perf_counter() - t0, 3)
    return stats
