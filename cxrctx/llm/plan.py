"""Token budget of a run, projected from a labeled sample (`--plan`).

Batch LLM inference on a GPU is bound by output tokens: with vLLM and prefix caching
the shared prompt is computed once and decoding dominates, so GPU time ≈ output tokens /
output tokens per second. The default figure is the published ≈ 6,300 output tokens/s
for an 8B model on one H100 with vLLM (datatrove's vLLM benchmark); the user gives their
own GPU's figure with `throughput_tokens_per_s`. All of MIMIC-CXR (≈ 228k reports) in
≤ 2 GPU-hours at that rate allows ≲ 200 output tokens per report on average.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from cxrctx.errors import CxrctxError

#: published output throughput of an 8B model on one H100 with vLLM (datatrove benchmark)
PUBLISHED_TOKENS_PER_S = 6300.0
PUBLISHED_GPU = "H100 (8B model, vLLM)"
#: free-text reports of MIMIC-CXR v2
MIMIC_REPORTS = 227_835
BUDGET_GPU_HOURS = 2.0


class Plan(BaseModel):
    """What a sample cost and what the full input will cost on the named GPU."""

    model_config = ConfigDict(extra="forbid")

    sample_documents: int = Field(description="Documents in the labeled sample")
    total_documents: int = Field(description="Documents in the full input")
    llm_documents: int = Field(description="Sampled documents that needed the model (unique texts)")
    llm_calls: int = Field(description="Engine requests of the sample, repairs included")
    prompt_tokens: int
    output_tokens: int
    output_tokens_per_document: float = Field(description="Over every sampled document")
    llm_calls_per_document: float
    gpu: str
    throughput_tokens_per_s: float = Field(description="Output tokens/s of one GPU")
    projected_output_tokens: int = Field(description="For the full input")
    projected_gpu_hours: float = Field(description="For the full input")
    budget_reports: int = MIMIC_REPORTS
    budget_gpu_hours: float = BUDGET_GPU_HOURS
    budget_tokens_per_report: float = Field(
        description="Output tokens/report that fit budget_reports into budget_gpu_hours"
    )
    budget_projected_gpu_hours: float = Field(
        description="budget_reports at this sample's output tokens/document"
    )
    within_budget: bool


def gpu_hours(output_tokens: float, throughput_tokens_per_s: float) -> float:
    return output_tokens / throughput_tokens_per_s / 3600.0


def check_sample(sample_documents: int, failed_documents: int, where: str) -> None:
    """Refuse to project from a sample in which documents failed: their cost is unknown, so
    the plan would under-count (a sample where everything failed would read "0 GPU-hours,
    within budget"). The answered documents stay cached for the re-run."""
    if sample_documents < 1:
        raise CxrctxError(f"--plan: the sample in {where} holds no documents; nothing to project")
    if failed_documents:
        raise CxrctxError(
            f"--plan: {failed_documents} of {sample_documents} sample documents failed (see "
            f"{where}/failures/); no plan from a failed sample: fix the cause and re-run --plan "
            "(answered documents are cached)"
        )


def make_plan(
    *,
    sample_documents: int,
    total_documents: int,
    llm_documents: int,
    llm_calls: int,
    prompt_tokens: int,
    output_tokens: int,
    throughput_tokens_per_s: float = PUBLISHED_TOKENS_PER_S,
    gpu: str = PUBLISHED_GPU,
) -> Plan:
    """Project a sample's cost per document onto the full input and onto all of MIMIC."""
    if throughput_tokens_per_s <= 0:
        raise ValueError("throughput_tokens_per_s must be > 0")
    n = max(1, sample_documents)
    per_doc = output_tokens / n
    total_tokens = per_doc * total_documents
    budget = BUDGET_GPU_HOURS * 3600.0 * throughput_tokens_per_s / MIMIC_REPORTS
    mimic_hours = gpu_hours(per_doc * MIMIC_REPORTS, throughput_tokens_per_s)
    return Plan(
        sample_documents=sample_documents, total_documents=total_documents,
        llm_documents=llm_documents, llm_calls=llm_calls, prompt_tokens=prompt_tokens,
        output_tokens=output_tokens, output_tokens_per_document=round(per_doc, 3),
        llm_calls_per_document=round(llm_calls / n, 4), gpu=gpu,
        throughput_tokens_per_s=throughput_tokens_per_s,
        projected_output_tokens=round(total_tokens),
        projected_gpu_hours=round(gpu_hours(total_tokens, throughput_tokens_per_s), 4),
        budget_tokens_per_report=round(budget, 1),
        budget_projected_gpu_hours=round(mimic_hours, 4), within_budget=per_doc <= budget,
    )  # fmt: skip
