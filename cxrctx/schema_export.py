"""Generate `schemas/*.schema.json` from the pydantic models.

Each stage registers its models here (file stem → "module:Class"); `cxrctx schemas`
writes them and `tests/test_schemas.py` fails when a file is stale.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from pydantic import BaseModel

from cxrctx.io import atomic_write_text
from cxrctx.resources import data_root, source_dir

#: schema file stem → "module:Class". Add a line when a stage adds a contract.
REGISTRY: dict[str, str] = {
    "record": "cxrctx.models:Record",
    "reject": "cxrctx.models:Reject",
    "lesion_label": "cxrctx.models:LesionLabel",
    "manifest": "cxrctx.models:Manifest",
    "build_priors_config": "cxrctx.mimic.build:BuildPriorsConfig",
    "synth_summary": "cxrctx.synth:SynthSummary",
    "synth_truth_study": "cxrctx.synth:TruthStudy",
    "lesion_answer": "cxrctx.labeling.models:LabelAnswer",
    "label_row": "cxrctx.labeling.models:LabelRow",
    "label_document": "cxrctx.labeling.models:DocumentRow",
    "label_failure": "cxrctx.labeling.models:FailureRow",
    "label_run_config": "cxrctx.labeling.models:LabelRunConfig",
    "label_eval_report": "cxrctx.labeling.models:EvalReport",
    "rules_reading": "cxrctx.labeling.models:RulesReading",
    "roi_row": "cxrctx.imagenome.build:RoiRow",
    "roi_reject": "cxrctx.imagenome.build:RoiReject",
    "train_config": "cxrctx.train.config:TrainConfig",
    "generated_report": "cxrctx.reportgen.generate:GeneratedReport",
    "evaluation_report": "cxrctx.reportgen.evaluate:EvaluationReport",
    "structured_answer": "cxrctx.structure.task:StructuredAnswer",
    "release_config": "cxrctx.release.meta:ReleaseConfig",
    "card_metadata": "cxrctx.release.meta:CardMetadata",
}


def schemas_dir() -> Path:
    """The schemas/ folder to write or check: the source checkout's, else the installed copy."""
    root = source_dir("schemas")
    if root is not None:
        return root
    return Path(str(data_root("schemas")))


def _load(spec: str) -> type[BaseModel]:
    module, _, name = spec.partition(":")
    model: type[BaseModel] = getattr(importlib.import_module(module), name)
    return model


def render_schema(spec: str) -> str:
    schema = _load(spec).model_json_schema()
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def render_all() -> dict[str, str]:
    return {f"{stem}.schema.json": render_schema(spec) for stem, spec in sorted(REGISTRY.items())}


def write_all(out_dir: str | Path | None = None) -> list[Path]:
    out = Path(out_dir) if out_dir is not None else schemas_dir()
    written = []
    for name, text in render_all().items():
        path = out / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            atomic_write_text(path, text)
        written.append(path)
    return written


def stale(out_dir: str | Path | None = None) -> list[str]:
    """Names of schema files that are missing or differ from the models."""
    out = Path(out_dir) if out_dir is not None else schemas_dir()
    bad = []
    for name, text in render_all().items():
        path = out / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            bad.append(name)
    return bad
