"""The package's import arrows point down: cli → stages → llm / io / vocab / models.

A stage reads another stage's *output* through that stage's reader or runs it as a step
(release rebuilds records; evaluate labels reports), but never imports it for vocabulary:
shared facts live in cxrctx.vocab. Any new stage-to-stage arrow must be added here on purpose.
"""

from __future__ import annotations

import ast
import collections
from pathlib import Path

import cxrctx

PKG = Path(cxrctx.__file__).parent
STAGES = {"mimic", "labeling", "imagenome", "train", "reportgen", "structure", "release", "synth"}
BASE = {"errors", "vocab", "models", "io", "output_policy", "resources", "schema_export", "jsonl",
        "progress"}
#: The stage → stage arrows that exist on purpose, each with its reason.
ALLOWED_STAGE_ARROWS = {
    ("train", "imagenome"),  # reads build-rois output with its reader
    ("reportgen", "train"),  # generate runs the trained model
    ("reportgen", "labeling"),  # evaluate labels generated and reference reports
    ("structure", "labeling"),  # the faithfulness check compares rules labels
    ("release", "mimic"),  # rebuild re-runs build-priors
    ("release", "labeling"),  # rebuild re-runs label-lesions
    ("release", "imagenome"),
    ("release", "structure"),
}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "cxrctx"


def _arrows() -> dict[str, set[str]]:
    out: dict[str, set[str]] = collections.defaultdict(set)
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        src = _unit(".".join(rel.parts))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("cxrctx")
            ):
                if node.module == "cxrctx":
                    out[src] |= {a.name for a in node.names if a.name in STAGES | BASE | {"llm"}}
                else:
                    out[src].add(_unit(node.module))
            elif isinstance(node, ast.Import):
                out[src] |= {_unit(a.name) for a in node.names if a.name.startswith("cxrctx.")}
    return {k: v - {k} for k, v in out.items()}


def test_base_modules_import_no_stage_llm_or_cli():
    bad = {
        (s, t)
        for s, ts in _arrows().items()
        if s in BASE
        for t in ts
        if t in STAGES | {"llm", "cli"}
    }
    assert not bad, f"base modules must not import stages/llm/cli: {sorted(bad)}"


def test_llm_layer_knows_no_stage():
    bad = {t for t in _arrows().get("llm", set()) if t in STAGES | {"cli"}}
    assert not bad, f"cxrctx.llm imports {sorted(bad)}"


def test_stages_import_no_cli_and_only_the_allowed_stages():
    arrows = _arrows()
    cli = {s for s in STAGES if "cli" in arrows.get(s, set())}
    assert not cli, f"stages importing the CLI: {sorted(cli)}"
    extra = {
        (s, t)
        for s in STAGES
        for t in arrows.get(s, set())
        if t in STAGES and (s, t) not in ALLOWED_STAGE_ARROWS
    }
    assert not extra, f"unexpected stage → stage imports: {sorted(extra)}"


def test_the_checker_sees_real_arrows():
    """Guard against a checker that finds nothing: known arrows must be seen."""
    arrows = _arrows()
    assert "vocab" in arrows["mimic"] and "llm" in arrows["labeling"]
    assert {"mimic", "labeling", "train"} <= arrows["cli"]
