"""Report generation from a trained CLALA-Net, and its evaluation.

Stages: `cxrctx.reportgen.generate.generate` (ROI sentences from the model, merged into one
report per study, by `merge_sentences` or an LLM aggregator) and
`cxrctx.reportgen.evaluate.evaluate` (lesion P/R/F1 by a labeler on both sides, classifier
AUC, ROUGE-L, METEOR, temporal hallucination, the LLM consistency judge). The functions are
reached through their modules (`generate`, `evaluate` here are the modules). The LLM tasks
(`aggregate_reports`, `judge_reports`) run on the shared task layer (`cxrctx.llm`).
"""

from __future__ import annotations

from cxrctx.reportgen import evaluate, generate
from cxrctx.reportgen.evaluate import EvaluationReport
from cxrctx.reportgen.generate import GeneratedReport, GenerateResult
from cxrctx.reportgen.merge import merge_sentences
from cxrctx.reportgen.metrics import classifier_auc, rouge_l, temporal_hallucination
from cxrctx.reportgen.tasks import aggregate_reports, judge_reports

__all__ = [
    "EvaluationReport",
    "GenerateResult",
    "GeneratedReport",
    "aggregate_reports",
    "classifier_auc",
    "evaluate",
    "generate",
    "judge_reports",
    "merge_sentences",
    "rouge_l",
    "temporal_hallucination",
]
