"""`label-lesions`: the one entry point over the three labelers.

`label_lesions` validates its configuration first (`LabelLesionsConfig`), then runs the
same phases for every labeler: read the input (`cxrctx.labeling.inputs`: its `--limit` and
`--shard` slice), claim the output folder (the shared output policy), stream the labels,
documents and failures tables, and write the manifest last. What differs between the
labelers (rules, llm, hybrid cot / short) is one small object each: how it dry-runs, what
decides its outputs (the resume key), how it writes the rows and what its manifest records.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from cxrctx.errors import CxrctxError
from cxrctx.labeling import hybrid
from cxrctx.labeling.finish import LabelFinish, build_finish
from cxrctx.labeling.inputs import LoadedInput, parse_shard, select_documents
from cxrctx.labeling.llm_labeler import label_documents, llm_dry_run
from cxrctx.labeling.models import Labeler, LabelLesionsConfig, LabelRunConfig
from cxrctx.labeling.prompt import LabelPrompt, load_prompt, schema_sha256
from cxrctx.labeling.rules import PROGRESS_EVERY, read_report, write_rules
from cxrctx.labeling.tables import (
    LabelResult,
    LabelRun,
    claim_output,
    open_sinks,
    write_label_manifest,
)
from cxrctx.llm.base import Engine
from cxrctx.llm.prompt import PromptFile
from cxrctx.llm.runner import Executor, TaskProgress, driver_engine, engine_identity
from cxrctx.llm.sink import Sink
from cxrctx.llm.spec import EngineSpec, make_engine
from cxrctx.progress import as_callback, progress_arg
from cxrctx.vocab import lexicon

__all__ = ["label_lesions"]

ProgressFn = Callable[[TaskProgress], None]


@progress_arg("label-lesions")
def label_lesions(
    input_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    labeler: Labeler | str | None = None,
    config: LabelLesionsConfig | None = None,
    engine: Engine | EngineSpec | None = None,
    progress: ProgressFn | bool | None = None,
    executor: Executor | None = None,
    **options: Any,
) -> LabelRun:
    """Label an input (build-priors dir or table file) into `out`; resumable via out/cache.

    `labeler`: "rules" (no model; the default without an engine), "llm" (the model for
    every candidate lesion; the default with an engine) or the hybrid "cot" / "short"
    (rules first, the model only for the lesions they leave ambiguous). `config` is a
    `LabelLesionsConfig`, or give its fields as keyword `options` (e.g. `limit=10`).
    `engine` is a built Engine or an EngineSpec (built here after the input checks, and
    closed at the end). A build-priors input is checked against its manifest first; `out`
    follows the shared output policy (another run's folder is refused unless `overwrite`).
    `progress`: a TaskProgress callback, or True for tqdm bars (`cxrctx.progress`).
    """
    progress = as_callback(progress)
    t0 = time.perf_counter()
    cfg = _config(config, options)
    kind = _labeler(labeler, engine, cfg)
    run: _LabelerRun = (
        _RulesRun(input_path, cfg, progress, engine)
        if kind is Labeler.rules or engine is None
        else _ModelRun(kind, input_path, cfg, engine, progress, executor)
    )
    sh = parse_shard(cfg.shard)
    loaded = select_documents(
        input_path,
        cfg.sections,
        cfg.id_column,
        cfg.text_column,
        cfg.limit,
        sh,
        cfg.max_report_bytes,
    )
    out_dir = Path(out)
    if cfg.dry_run:
        info = run.dry_run(loaded.docs)
        return LabelRun(out_dir, None, None, dry_run=info, seconds=time.perf_counter() - t0)
    key = run.run_key(loaded)
    with run.engine_scope():
        try:
            claim_output(out_dir, key, loaded, sh, cfg.overwrite)
            result, tables = _stream(run, loaded, out_dir, sh)
            manifest = write_label_manifest(
                out_dir, result, run.run_config(loaded, result), loaded.inputs, tables, sh
            )
        except OSError as e:
            raise CxrctxError(f"{out_dir}: cannot write the outputs ({e.strerror or e})") from e
    return LabelRun(out_dir, result, manifest, seconds=time.perf_counter() - t0)


def _config(config: LabelLesionsConfig | None, options: dict[str, Any]) -> LabelLesionsConfig:
    """The run's validated configuration: `config`, or one built from keyword options."""
    if config is None:
        return LabelLesionsConfig(**options)
    if options:
        raise TypeError(f"pass config or its fields, not both (got {', '.join(options)})")
    return config


def _labeler(
    labeler: Labeler | str | None, engine: Engine | EngineSpec | None, cfg: LabelLesionsConfig
) -> Labeler:
    """The labeler to run; the rules take no engine (but for `examples` with the llm
    adjudicator), every other labeler needs one. Examples and the uncertainty policy act
    on rule readings, so they go with the rules labeler only."""
    adjudicating = cfg.examples is not None and cfg.adjudicator == "llm"
    if labeler is None:
        return Labeler.rules if engine is None or adjudicating else Labeler.llm
    kind = Labeler(labeler)
    if kind is not Labeler.rules and (cfg.examples is not None or cfg.uncertain != "positive"):
        raise CxrctxError(
            "examples and the uncertainty policy act on rule readings: use the rules labeler"
        )
    if kind is Labeler.rules and engine is not None and not adjudicating:
        raise CxrctxError(
            "the rules labeler takes no engine (but for examples with the llm adjudicator)"
        )
    if kind is Labeler.rules and adjudicating and engine is None:
        raise CxrctxError("the llm adjudicator needs --model (an engine)")
    if kind is not Labeler.rules and engine is None:
        raise CxrctxError(f"the {kind.value} labeler needs an engine (an Engine or EngineSpec)")
    return kind


def _stream(
    run: _LabelerRun, loaded: LoadedInput, out_dir: Path, sh: tuple[int, int] | None
) -> tuple[LabelResult, dict[str, list[Any]]]:
    """Stream the labels into out_dir's tables, then the rows rejected for size and the
    header-only studies' not_mentioned rows (every labeler alike); on any error the partial
    parts are dropped."""
    sinks = open_sinks(out_dir, sh)
    try:
        result = run.write(loaded.docs, dict(sinks), out_dir, sh)
        loaded.write_rejects(dict(sinks), result.counts)
        loaded.write_header_only(dict(sinks), result.counts, result.provenance)
    except BaseException:
        for s in sinks.values():
            s.abort()
        raise
    tables = {name: s.close() for name, s in sinks.items()}
    result.out = out_dir
    return result, tables


def _input_fields(cfg: LabelLesionsConfig, loaded: LoadedInput) -> dict[str, Any]:
    """The document options a manifest records: sections of records, columns of a table."""
    rec = loaded.kind == "records"
    return {
        "sections": list(cfg.sections) if rec else None,
        "id_column": None if rec else cfg.id_column,
        "text_column": None if rec else cfg.text_column,
    }


class _LabelerRun(Protocol):
    """What differs between the labelers in a label-lesions run."""

    def dry_run(self, docs: pl.DataFrame) -> dict[str, Any]: ...

    def run_key(self, loaded: LoadedInput) -> dict[str, Any]: ...

    def engine_scope(self) -> Any: ...

    def write(
        self, docs: pl.DataFrame, sinks: dict[str, Sink], out_dir: Path, sh: tuple[int, int] | None
    ) -> LabelResult: ...

    def run_config(self, loaded: LoadedInput, result: LabelResult) -> LabelRunConfig: ...


class _RulesRun:
    """The rules labeler: no model; the manifest records the lexicon as the prompt. With
    `examples` its ambiguous readings are adjudicated (`cxrctx.labeling.finish`), by the
    exemplar vote or by `engine`; the uncertainty policy is applied last."""

    def __init__(
        self,
        input_path: Any,
        cfg: LabelLesionsConfig,
        progress: ProgressFn | None,
        engine: Engine | EngineSpec | None = None,
    ):
        self.input_path, self.cfg, self.progress, self.engine = input_path, cfg, progress, engine
        self._finish: LabelFinish | None = None

    @property
    def finish(self) -> LabelFinish:
        """Built once, before the output is claimed (a bad examples file fails first)."""
        if self._finish is None:
            c, e = self.cfg, self.engine
            self._finish = build_finish(
                uncertain=c.uncertain,
                examples=c.examples,
                adjudicator=c.adjudicator,
                k=c.k,
                threshold=c.threshold,
                model=getattr(e, "model", None),
                prompt=None,
                engine_needed=e is not None,
            )
        return self._finish

    def dry_run(self, docs: pl.DataFrame) -> dict[str, Any]:
        first = next((t.strip() for t in docs["text"].to_list() if t and t.strip()), None)
        info: dict[str, Any] = {"documents": docs.height, "lexicon_sha256": lexicon().sha256}
        if first is not None:
            info["reading"] = read_report(first).model_dump(mode="json")
        return info

    def run_key(self, loaded: LoadedInput) -> dict[str, Any]:
        """The manifest config, less what does not decide the outputs."""
        cfg = self.run_config(loaded, None)
        return cfg.model_dump(mode="json", exclude={"input", "shard", "batch_size"})

    @contextmanager
    def engine_scope(self) -> Iterator[None]:
        """The llm adjudicator's engine (an EngineSpec is built here, and closed)."""
        e = self.engine
        if e is None or self.cfg.examples is None:
            yield
            return
        eng = make_engine(e) if isinstance(e, EngineSpec) else e
        self.finish.engine = eng
        try:
            yield
        finally:
            if isinstance(e, EngineSpec):
                eng.close()

    def write(
        self, docs: pl.DataFrame, sinks: dict[str, Sink], out_dir: Path, sh: tuple[int, int] | None
    ) -> LabelResult:
        self.finish.cache_dir = self.cfg.cache_dir or out_dir / "cache"
        p = self.progress
        if p is None:
            return write_rules(docs, sinks, finish=self.finish)
        last = TaskProgress(done=0, total=docs.height, requests=0, tokens=0, cached=0, failed=0)

        def step(i: int, n: int, f: int) -> None:
            nonlocal last
            last = TaskProgress(done=i, total=n, requests=0, tokens=0, cached=0, failed=f)
            p(last)

        return write_rules(
            docs, sinks, step, lambda what: p(replace(last, phase=what)), finish=self.finish
        )

    def run_config(self, loaded: LoadedInput, result: LabelResult | None) -> LabelRunConfig:
        lex, c = lexicon(), self.cfg
        return LabelRunConfig(
            backend="rules",
            model=None,
            prompt_version=lex.version,
            prompt_sha256=lex.sha256,
            schema_sha256=schema_sha256(),
            sampling={},
            input=str(self.input_path),
            **_input_fields(c, loaded),
            shard=c.shard,
            limit=c.limit,
            batch_size=PROGRESS_EVERY,
            prepass=False,
            lexicon_version=lex.version,
            lexicon_sha256=lex.sha256,
            mode=None,
            **self.finish.config(),
        )


class _ModelRun:
    """The llm labeler or the hybrid one (cot / short): a prompt and an engine."""

    def __init__(
        self,
        kind: Labeler,
        input_path: Any,
        cfg: LabelLesionsConfig,
        engine: Engine | EngineSpec,
        progress: ProgressFn | None,
        executor: Executor | None,
    ):
        self.kind, self.input_path, self.cfg = kind, input_path, cfg
        self.engine, self.progress, self.executor = engine, progress, executor
        self.spec = engine if isinstance(engine, EngineSpec) else None
        self.prompt: PromptFile = (
            load_prompt(cfg.prompt)
            if kind is Labeler.llm
            else hybrid.load_hybrid_prompt(cfg.prompt)
        )
        self.eng: Engine | None = None

    def dry_run(self, docs: pl.DataFrame) -> dict[str, Any]:
        if isinstance(self.prompt, LabelPrompt):
            return llm_dry_run(docs, self.prompt, self.cfg.prepass)
        assert isinstance(self.prompt, hybrid.HybridPrompt)
        return hybrid.hybrid_dry_run(docs, self.prompt, self.kind)

    def run_key(self, loaded: LoadedInput) -> dict[str, Any]:
        """What decides a run's outputs (not the shard, the input's path or the batch size)."""
        c, e = self.cfg, self.engine
        return {
            "engine": e.public() if isinstance(e, EngineSpec) else engine_identity(e),
            "prompt_version": self.prompt.version,
            "prompt_sha256": self.prompt.sha256,
            "schema_sha256": schema_sha256(),
            "sampling": c.sampling.as_dict(),
            **_input_fields(c, loaded),
            "limit": c.limit,
            "prepass": c.prepass,
            "mode": self.kind.value,
        }

    @contextmanager
    def engine_scope(self) -> Iterator[None]:
        """The engine for the run: an EngineSpec is built here (checking its route) and closed."""
        if self.spec is None:
            assert not isinstance(self.engine, EngineSpec)
            self.eng = self.engine
            yield
            return
        self.eng = _build_engine(self.executor, self.spec)
        try:
            yield
        finally:
            self.eng.close()

    def write(
        self, docs: pl.DataFrame, sinks: dict[str, Sink], out_dir: Path, sh: tuple[int, int] | None
    ) -> LabelResult:
        assert self.eng is not None
        c = self.cfg
        writer = f"shard-{sh[0]:05d}-of-{sh[1]:05d}" if sh else "main"
        cache = c.cache_dir or out_dir / "cache"
        if isinstance(self.prompt, LabelPrompt):
            return label_documents(
                docs,
                self.eng,
                sampling=c.sampling,
                cache_dir=cache,
                prompt=self.prompt,
                batch_size=c.batch_size,
                prepass=c.prepass,
                progress=self.progress,
                cache_writer=writer,
                executor=self.executor,
                sinks=sinks,
            )
        assert isinstance(self.prompt, hybrid.HybridPrompt)
        return hybrid.label_documents_hybrid(
            docs,
            self.eng,
            mode=self.kind,
            sampling=c.sampling,
            cache_dir=cache,
            prompt=self.prompt,
            batch_size=c.batch_size,
            progress=self.progress,
            cache_writer=writer,
            executor=self.executor,
            sinks=sinks,
        )

    def run_config(self, loaded: LoadedInput, result: LabelResult) -> LabelRunConfig:
        c, prov = self.cfg, result.provenance
        cfg = LabelRunConfig(
            backend=prov["backend"],
            model=prov["model"],
            prompt_version=self.prompt.version,
            prompt_sha256=self.prompt.sha256,
            schema_sha256=schema_sha256(),
            sampling=c.sampling.as_dict(),
            input=str(self.input_path),
            **_input_fields(c, loaded),
            shard=c.shard,
            limit=c.limit,
            batch_size=result.stats.batch_size if result.stats else 0,
            prepass=c.prepass,
            mode=None,
            engine_options=(
                self.spec.public() if self.spec is not None else {"base_url": prov.get("base_url")}
            ),
        )
        if self.kind is Labeler.llm:
            return cfg.model_copy(update={"mode": self.kind.value})
        return hybrid.hybrid_config(cfg, self.kind, result)


def _build_engine(executor: Executor | None, spec: EngineSpec) -> Engine:
    """The local executor's engine (`make_engine`), or a distributed executor's stand-in."""
    if callable(getattr(executor, "driver_engine", None)):
        return driver_engine(executor, spec)
    return make_engine(spec)
