"""Lesion labeling: the versioned prompt, the label-lesions run, and eval-labels.

Public API (stable): `label_documents`, `LabelResult`, `label_lesions`, `load_documents`,
`load_prompt`, `evaluate_labels`, `EvalReport`, `load_gold`, `eval_labels`.
"""

from __future__ import annotations

from cxrctx.labeling.evaluate import (
    EvalReport,
    eval_labels,
    evaluate_labels,
    load_gold,
    load_labels,
)
from cxrctx.labeling.models import LabelAnswer, LesionAnswer, answer_schema
from cxrctx.labeling.prompt import LabelPrompt, load_prompt, schema_sha256
from cxrctx.labeling.run import (
    LabelResult,
    LabelRun,
    label_documents,
    label_lesions,
    load_documents,
)

__all__ = [
    "EvalReport",
    "LabelAnswer",
    "LabelPrompt",
    "LabelResult",
    "LabelRun",
    "LesionAnswer",
    "answer_schema",
    "eval_labels",
    "evaluate_labels",
    "label_documents",
    "label_lesions",
    "load_documents",
    "load_gold",
    "load_labels",
    "load_prompt",
    "schema_sha256",
]
