"""Lesion labeling: one entry point (`label_lesions`) over three labelers, and eval-labels.

Public API (stable): `label_lesions` (the stage: rules, llm or hybrid into a folder, chosen
by `Labeler`, configured by `LabelLesionsConfig`), `LabelRun`, `LabelResult`,
`label_documents` (the llm labeler on a frame), `load_documents`, `load_prompt`,
`evaluate_labels`, `EvalReport`, `load_gold`, `eval_labels`; the rules (`read_report`,
`label_documents_rules`, `rules_labels`, `RulesReading`), the hybrid labeler
(`label_documents_hybrid`, `load_hybrid_prompt`) and the keyword baseline (`keyword_labels`).
"""

from __future__ import annotations

from cxrctx.labeling.evaluate import (
    EvalReport,
    eval_labels,
    evaluate_labels,
    load_gold,
    load_labels,
)
from cxrctx.labeling.hybrid import (
    HybridTask,
    label_documents_hybrid,
    load_hybrid_prompt,
)
from cxrctx.labeling.inputs import load_documents
from cxrctx.labeling.keyword import keyword_labels
from cxrctx.labeling.llm_labeler import label_documents
from cxrctx.labeling.models import (
    LabelAnswer,
    Labeler,
    LabelLesionsConfig,
    LesionAnswer,
    LesionReading,
    RulesReading,
    answer_schema,
)
from cxrctx.labeling.prompt import LabelPrompt, load_prompt, schema_sha256
from cxrctx.labeling.rules import label_documents_rules, read_report, rules_labels
from cxrctx.labeling.stage import label_lesions
from cxrctx.labeling.tables import LABEL_FRAME_SCHEMA, LabelResult, LabelRun

__all__ = [
    "LABEL_FRAME_SCHEMA",
    "EvalReport",
    "HybridTask",
    "LabelAnswer",
    "LabelLesionsConfig",
    "LabelPrompt",
    "LabelResult",
    "LabelRun",
    "Labeler",
    "LesionAnswer",
    "LesionReading",
    "RulesReading",
    "answer_schema",
    "eval_labels",
    "evaluate_labels",
    "keyword_labels",
    "label_documents",
    "label_documents_hybrid",
    "label_documents_rules",
    "label_lesions",
    "load_documents",
    "load_gold",
    "load_hybrid_prompt",
    "load_labels",
    "load_prompt",
    "read_report",
    "rules_labels",
    "schema_sha256",
]
