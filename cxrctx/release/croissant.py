"""`croissant.json`: MLCommons Croissant 1.1 metadata of a release bundle.

Written as plain JSON-LD (the exact form `mlcroissant` emits), so a release needs no extra
package; `validate_croissant` loads it with `mlcroissant` when that optional extra is
installed and reports its errors. One FileObject per data file (with its sha256), one
FileSet and one RecordSet per table; scalar and list-of-scalar columns are described
field by field, nested columns (images, priors, ROI boxes) in the record set description.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from cxrctx.models import ShardInfo
from cxrctx.release.card import TABLE_DOCS

log = logging.getLogger(__name__)

CONFORMS_TO = "http://mlcommons.org/croissant/1.1"
_CONTEXT: dict[str, Any] = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}
_FORMATS = {"parquet": "application/x-parquet", "jsonl": "application/jsonlines"}


def _data_type(dtype: Any) -> tuple[str | None, bool]:
    """(Croissant dataType, is_array) of a polars column; (None, _) for nested ones."""
    array = False
    if isinstance(dtype, pl.List):
        dtype, array = dtype.inner, True
    if dtype.is_integer():
        return "sc:Integer", array
    if dtype.is_float():
        return "sc:Float", array
    if dtype == pl.Boolean:
        return "sc:Boolean", array
    if dtype == pl.String:
        return "sc:Text", array
    if isinstance(dtype, pl.Datetime | pl.Date):
        return "sc:Date", array
    return None, array


def _schema_of(bundle: Path, info: ShardInfo) -> pl.Schema:
    f = bundle / info.path
    if f.suffix == ".parquet":
        return pl.Schema(pl.from_arrow(pq.read_schema(f).empty_table()).schema)  # type: ignore[union-attr]
    return pl.read_ndjson(f, n_rows=50).schema


def _record_set(table: str, schema: pl.Schema, doc: str) -> dict[str, Any]:
    fields, nested = [], []
    for col, dtype in schema.items():
        kind, array = _data_type(dtype)
        if kind is None:
            nested.append(col)
            continue
        field: dict[str, Any] = {"@type": "cr:Field", "@id": f"{table}/{col}", "name": col}
        if array:
            field.update({"cr:arrayShape": "-1", "cr:isArray": True})
        field["dataType"] = kind
        field["source"] = {"fileSet": {"@id": f"{table}-files"}, "extract": {"column": col}}
        fields.append(field)
    desc = doc + (
        f". Nested columns (see the Parquet schema): {', '.join(nested)}" if nested else ""
    )
    return {
        "@type": "cr:RecordSet",
        "@id": table,
        "name": table,
        "description": desc,
        "field": fields,
    }


def build_croissant(kind: str, bundle: Path, tables: dict[str, list[ShardInfo]], cfg: Any) -> str:
    """The croissant.json text of one bundle (deterministic: no dates)."""
    dist: list[dict[str, Any]] = []
    sets: list[dict[str, Any]] = []
    for table, infos in tables.items():
        if not infos:
            continue
        ext = infos[0].path.rsplit(".", 1)[-1]
        fmt = _FORMATS.get(ext, "application/octet-stream")
        for s in infos:
            dist.append(
                {"@type": "cr:FileObject", "@id": s.path, "name": s.path, "contentUrl": s.path,
                 "encodingFormat": fmt, "sha256": s.sha256}
            )  # fmt: skip
        dist.append(
            {"@type": "cr:FileSet", "@id": f"{table}-files", "name": f"{table}-files",
             "encodingFormat": fmt, "includes": f"{Path(infos[0].path).parent.as_posix()}/*.{ext}"}
        )  # fmt: skip
        sets.append(_record_set(table, _schema_of(bundle, infos[0]), TABLE_DOCS.get(table, table)))
    doc = {
        "@context": _CONTEXT,
        "@type": "sc:Dataset",
        "name": f"{cfg.name} ({kind})".replace("/", "-"),
        "description": (
            f"Clinical-context chest X-ray report-generation data derived from MIMIC-CXR, {kind} "
            f"bundle; target section(s): {cfg.target}. "
            + (
                "Identifiers and enumerated labels only; rebuild the text with `cxrctx rebuild`."
                if kind == "public"
                else "Contains report text: PhysioNet Credentialed Health Data licence."
            )
        ),
        "conformsTo": CONFORMS_TO,
        "citeAs": f"{cfg.name} {cfg.version}, made with cxrctx from MIMIC-CXR (Johnson et al., 2019)",
        "license": cfg.license,
        "url": "https://physionet.org/content/mimic-cxr/2.0.0/",
        "version": cfg.version,
        "distribution": dist,
        "recordSet": sets,
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def validate_croissant(path: str | Path) -> list[str] | None:
    """Errors `mlcroissant` finds in a croissant.json; None when mlcroissant is not installed."""
    try:
        import mlcroissant as mlc
    except ImportError:
        return None
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        ds = mlc.Dataset(jsonld=str(path))
    except Exception as e:  # mlcroissant raises its ValidationError (and others) here
        return [
            f"{path}: {line}" for line in str(e).splitlines() if line.strip().startswith("-")
        ] or [f"{path}: {e}"]
    return [f"{path}: {e}" for e in ds.metadata.issues.errors]
