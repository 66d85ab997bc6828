"""The packages the user named are declared AND imported where their job is (read from the
source by AST, so a declared-but-unused package cannot come back), and JSONL has one door."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "cxrctx"

#: package -> (the job, modules that must import it for that job); vllm is an extra
JOBS: dict[str, tuple[str, list[str]]] = {
    "polars": ("tables of every stage", ["io.py", "mimic/build.py", "jsonl.py"]),
    "pyarrow": ("Parquet shards and their schemas", ["io.py", "llm/sink.py"]),
    "pydicom": ("DICOM headers", ["mimic/dicom_scan.py"]),
    "openai": ("OpenAI-compatible servers", ["llm/openai_compat.py"]),
    "vllm": ("the in-process GPU engine", ["llm/vllm_engine.py"]),
    "pydantic": ("records, labels, configs, manifests", ["models.py", "labeling/models.py"]),
    "typer": ("the CLI", ["cli/app.py"]),
    "rich": ("the CLI's tables and terminal progress", ["cli/app.py", "cli/progress.py"]),
    "jsonlines": ("every JSONL file", ["jsonl.py"]),
    "tqdm": ("progress=True in the Python API (and plain CLI lines)", ["progress.py"]),
}
EXTRAS = {"vllm": "vllm"}


def _imports(path: Path) -> set[str]:
    """Top-level package names `path` imports anywhere (module level or inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]

    def name(req: str) -> str:
        return re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].lower()

    extras = {k: {name(r) for r in v} for k, v in meta["optional-dependencies"].items()}
    return {name(r) for r in meta["dependencies"]}, extras


@pytest.mark.parametrize("package", sorted(JOBS))
def test_each_named_package_is_declared_and_imported_where_its_job_is(package):
    job, modules = JOBS[package]
    core, extras = _declared()
    if package in EXTRAS:
        assert package in extras[EXTRAS[package]] and package not in core
    else:
        assert package in core, f"{package} ({job}) is not a declared dependency"
    for mod in modules:
        assert package in _imports(PKG / mod), f"cxrctx/{mod} does not import {package} ({job})"


def test_jsonl_files_are_read_and_written_only_through_cxrctx_jsonl():
    """No module but cxrctx/jsonl.py imports jsonlines or calls polars' ndjson readers and
    writers (which would bypass the one line policy)."""
    offenders = []
    for f in sorted(PKG.rglob("*.py")):
        if f == PKG / "jsonl.py":
            continue
        tree = ast.parse(f.read_text(encoding="utf-8"))
        if "jsonlines" in _imports(f):
            offenders.append(f"{f.relative_to(ROOT)}: imports jsonlines")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in (
                "read_ndjson", "write_ndjson", "scan_ndjson", "sink_ndjson"
            ):  # fmt: skip
                offenders.append(f"{f.relative_to(ROOT)}:{node.lineno}: {node.attr}")
    assert offenders == []
