"""`structure-reports --plan`: structure a sample, then project the full run's GPU-hours.

The sample is the first `sample` records of the input, structured into OUT/plan-sample (a
normal, resumable structure-reports output: a re-run of the plan reuses its cache); OUT
itself is claimed for the full run of the same options, which later resumes into it. Its
cost is counted once per unique text, repairs included, with the tokens each answer cost
when it was asked, so the plan is the same whether or not the sample was cached.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cxrctx.io import atomic_write_text
from cxrctx.llm.base import Sampling
from cxrctx.llm.plan import PUBLISHED_GPU, PUBLISHED_TOKENS_PER_S, Plan, check_sample, make_plan
from cxrctx.output_policy import prepare_output
from cxrctx.structure.run import STAGE, iter_items, load_reports, run_key, structure_reports
from cxrctx.structure.task import load_structure_prompt

PLAN_DIR = "plan-sample"
DEFAULT_SAMPLE = 200


def plan_structure_reports(
    input_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    sample: int = DEFAULT_SAMPLE,
    throughput_tokens_per_s: float = PUBLISHED_TOKENS_PER_S,
    gpu: str = PUBLISHED_GPU,
    priors: bool = False,
    id_column: str = "id",
    limit: int | None = None,
    **structure_kwargs: Any,
) -> Plan:
    """Structure the first `sample` records into OUT/plan-sample and project the full input
    (after `limit`; with `priors`, its prior reports too) onto `gpu` at
    `throughput_tokens_per_s` output tokens/s."""
    if sample < 1:
        raise ValueError("sample must be >= 1")
    loaded = load_reports(input_path, id_column=id_column)
    frame = loaded.frame.head(limit) if limit is not None else loaded.frame
    total = sum(1 for _ in iter_items(frame, priors))
    # OUT is claimed for the full run of the same options, which then resumes into it
    sampling = structure_kwargs.get("sampling") or Sampling(max_tokens=768)
    key = run_key(
        loaded,
        structure_kwargs["engine"],
        load_structure_prompt(structure_kwargs.get("prompt")),
        sampling,
        priors=priors,
        limit=limit,
        id_column=id_column,
    )
    prepare_output(
        out, stage=STAGE, config_hash=key, overwrite=structure_kwargs.get("overwrite", False)
    )
    sample_out = Path(out) / PLAN_DIR
    run = structure_reports(
        input_path,
        sample_out,
        priors=priors,
        id_column=id_column,
        limit=max(1, min(sample, frame.height)),
        **structure_kwargs,
    )
    check_sample(run.result.counts["reports"], run.result.counts["failed"], str(sample_out))
    plan = make_plan(
        sample_documents=run.result.counts["reports"],
        total_documents=total,
        throughput_tokens_per_s=throughput_tokens_per_s,
        gpu=gpu,
        **run.result.cost,
    )
    atomic_write_text(sample_out / "plan.json", plan.model_dump_json(indent=2) + "\n")
    return plan
