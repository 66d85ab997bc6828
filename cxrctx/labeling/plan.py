"""`label-lesions --plan`: label a sample, then project the full run's GPU-hours.

The sample is the first `sample` documents of the input, labeled into OUT/plan-sample
(a normal, resumable label-lesions output: a re-run of the plan reuses its cache). Its
cost is read back from the documents table, once per unique text (duplicates share one
request; cached answers keep the tokens they cost when they were asked), so the plan is
the same whether or not the sample was already cached.
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from cxrctx.io import atomic_write_text
from cxrctx.labeling.inputs import select_documents
from cxrctx.labeling.models import Labeler, LabelLesionsConfig
from cxrctx.labeling.stage import ProgressFn, label_lesions
from cxrctx.llm.base import Engine
from cxrctx.llm.plan import PUBLISHED_GPU, PUBLISHED_TOKENS_PER_S, Plan, check_sample, make_plan
from cxrctx.llm.runner import Executor
from cxrctx.llm.spec import EngineSpec

PLAN_DIR = "plan-sample"
DEFAULT_SAMPLE = 200


def sample_cost(documents: pl.DataFrame) -> dict[str, int]:
    """LLM documents, calls and tokens of a documents table, once per unique text."""
    called = documents.filter(pl.col("llm_called")).unique("text_sha256", keep="first")
    return {
        "llm_documents": called.height,
        "llm_calls": int(called["attempts"].sum() or 0),
        "prompt_tokens": int(called["prompt_tokens"].sum() or 0),
        "output_tokens": int(called["completion_tokens"].sum() or 0),
    }


def plan_label_lesions(
    input_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    labeler: Labeler | str = Labeler.llm,
    config: LabelLesionsConfig | None = None,
    engine: Engine | EngineSpec,
    sample: int = DEFAULT_SAMPLE,
    throughput_tokens_per_s: float = PUBLISHED_TOKENS_PER_S,
    gpu: str = PUBLISHED_GPU,
    progress: ProgressFn | None = None,
    executor: Executor | None = None,
) -> Plan:
    """Label the first `sample` documents into OUT/plan-sample with `labeler` and `engine`
    and project the full input (after `config.limit`) onto `gpu` at
    `throughput_tokens_per_s` output tokens/s."""
    if sample < 1:
        raise ValueError("sample must be >= 1")
    cfg = config or LabelLesionsConfig()
    full = select_documents(
        input_path, cfg.sections, cfg.id_column, cfg.text_column, cfg.limit, None
    )
    total = full.docs.height + len(full.header_only)  # header-only: documents, no call
    n = min(sample, total)
    sample_out = Path(out) / PLAN_DIR
    # the whole input's first n documents, never a slice, a dry run or another run's folder
    sample_cfg = cfg.model_copy(
        update={"limit": n, "shard": None, "dry_run": False, "overwrite": False}
    )
    run = label_lesions(
        input_path,
        sample_out,
        labeler=labeler,
        config=sample_cfg,
        engine=engine,
        progress=progress,
        executor=executor,
    )
    docs = run.result.documents if run.result is not None else pl.DataFrame()
    failed = run.result.counts.get("failed", 0) if run.result is not None else 0
    check_sample(docs.height, failed, str(sample_out))
    plan = make_plan(
        sample_documents=docs.height,
        total_documents=total,
        throughput_tokens_per_s=throughput_tokens_per_s,
        gpu=gpu,
        **sample_cost(docs),
    )
    atomic_write_text(sample_out / "plan.json", plan.model_dump_json(indent=2) + "\n")
    return plan
