"""`croissant.json`: MLCommons Croissant 1.1 metadata of a release bundle.

Written as plain JSON-LD (the exact form `mlcroissant` emits), so a release needs no extra
package; `validate_croissant` loads it with `mlcroissant` (the `release` extra) and
reports its errors. One FileObject per data file (with its sha256), one FileSet and one
RecordSet per table, and every Parquet column a Field of its type: a list is an array
field (`isArray`), a struct a field with `subField`s read by `jsonPath`, so nested
columns (images, priors, CheXpert/NegBio labels, ROI boxes) are described down to their
leaves. `croissant_problems` loads the file with `mlcroissant`, compares its fields with
the Parquet schemas and reads records of every record set.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from cxrctx import jsonl
from cxrctx.models import ShardInfo
from cxrctx.release.card import TABLE_DOCS

log = logging.getLogger(__name__)

CONFORMS_TO = "http://mlcommons.org/croissant/1.1"
_CONTEXT: dict[str, Any] = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "arrayShape": "cr:arrayShape",
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
    "isArray": "cr:isArray",
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


def _data_type(dtype: Any) -> str:
    """Croissant dataType of a scalar polars dtype."""
    if dtype.is_integer():
        return "sc:Integer"
    if dtype.is_float():
        return "sc:Float"
    if dtype == pl.Boolean:
        return "sc:Boolean"
    if isinstance(dtype, pl.Datetime):
        return "sc:DateTime"
    if isinstance(dtype, pl.Date):
        return "sc:Date"
    return "sc:Text"


def _schema_of(bundle: Path, info: ShardInfo) -> pl.Schema:
    f = bundle / info.path
    if f.suffix == ".parquet":
        return pl.Schema(pl.from_arrow(pq.read_schema(f).empty_table()).schema)  # type: ignore[union-attr]
    return jsonl.read_frame(f, n_rows=50).schema


def _field(fid: str, name: str, dtype: Any, source: dict[str, Any]) -> dict[str, Any]:
    """One Field (recursively: a struct's members are subFields read by jsonPath)."""
    field: dict[str, Any] = {"@type": "cr:Field", "@id": fid, "name": name}
    if isinstance(dtype, pl.List | pl.Array):
        dtype = dtype.inner
        field.update({"isArray": True, "arrayShape": "-1"})
    if isinstance(dtype, pl.Struct):
        field["subField"] = [
            _field(
                f"{fid}/{f.name}",
                f.name,
                f.dtype,
                {**source, "transform": [*source.get("transform", []), {"jsonPath": f.name}]},
            )
            for f in dtype.fields
        ]
    else:
        field["dataType"] = _data_type(dtype)
    field["source"] = source
    return field


def _record_set(table: str, schema: pl.Schema, doc: str) -> dict[str, Any]:
    fields = [
        _field(
            f"{table}/{col}",
            col,
            dtype,
            {"fileSet": {"@id": f"{table}-files"}, "extract": {"column": col}},
        )
        for col, dtype in schema.items()
    ]
    return {
        "@type": "cr:RecordSet",
        "@id": table,
        "name": table,
        "description": doc,
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
                {
                    "@type": "cr:FileObject",
                    "@id": s.path,
                    "name": s.path,
                    "contentUrl": s.path,
                    "encodingFormat": fmt,
                    "sha256": s.sha256,
                }
            )
        dist.append(
            {
                "@type": "cr:FileSet",
                "@id": f"{table}-files",
                "name": f"{table}-files",
                "encodingFormat": fmt,
                "includes": f"{Path(infos[0].path).parent.as_posix()}/*.{ext}",
            }
        )
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


def _expected_fields(table: str, schema: pl.Schema) -> dict[str, Any]:
    """Field id → Croissant dataType (None for a struct) that a table's Parquet schema needs."""
    out: dict[str, Any] = {}

    def walk(fid: str, dtype: Any) -> None:
        array = isinstance(dtype, pl.List | pl.Array)
        inner = dtype.inner if array else dtype
        if isinstance(inner, pl.Struct):
            out[fid] = (None, array)
            for f in inner.fields:
                walk(f"{fid}/{f.name}", f.dtype)
        else:
            out[fid] = (_data_type(inner), array)

    for col, dtype in schema.items():
        walk(f"{table}/{col}", dtype)
    return out


def _declared_fields(rs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def walk(f: dict[str, Any]) -> None:
        subs = f.get("subField") or []
        out[str(f.get("@id"))] = (None if subs else f.get("dataType"), bool(f.get("isArray")))
        for s in subs:
            walk(s)

    for f in rs.get("field") or []:
        walk(f)
    return out


def croissant_problems(
    bundle: Path, tables: dict[str, list[ShardInfo]], n_records: int = 2
) -> list[str]:
    """croissant.json through `mlcroissant`: its errors, fields ≠ Parquet columns, record
    sets that do not load. Empty when mlcroissant is not installed (the `release` extra)."""
    path = Path(bundle) / "croissant.json"
    errors = validate_croissant(path)
    if errors is None or errors:
        return errors or []
    doc = json.loads(path.read_text(encoding="utf-8"))
    sets = {rs.get("@id"): rs for rs in doc.get("recordSet", [])}
    out: list[str] = []
    for table, infos in tables.items():
        if not infos or not infos[0].path.endswith(".parquet"):
            continue
        if table not in sets:
            out.append(f"{path}: no record set for table {table}")
            continue
        schemas = {str(_schema_of(bundle, s)) for s in infos}
        if len(schemas) > 1:
            out.append(f"{bundle}/data/{table}: files with different Parquet schemas")
        want = _expected_fields(table, _schema_of(bundle, infos[0]))
        got = _declared_fields(sets[table])
        for fid in sorted(set(want) | set(got)):
            if want.get(fid) != got.get(fid):
                out.append(
                    f"{path}: field {fid} is {got.get(fid)} (dataType, isArray), "
                    f"the Parquet column needs {want.get(fid)}"
                )
    return out or _load_problems(path, [t for t in tables if t in sets], n_records)


def _readable_copy(doc: dict[str, Any]) -> dict[str, Any]:
    """The Croissant without arrays nested in arrays (priors[].images[]): mlcroissant 1.1
    reads Parquet through pandas, whose inner lists are numpy arrays its jsonPath cannot
    walk. They stay described in croissant.json; every top-level column is still read."""
    import copy

    def prune(f: dict[str, Any], in_array: bool) -> None:
        here = in_array or bool(f.get("isArray"))
        keep = []
        for sub in f.get("subField") or []:
            if here and sub.get("isArray") and sub.get("subField"):
                continue
            prune(sub, here)
            keep.append(sub)
        if "subField" in f:
            f["subField"] = keep

    out = copy.deepcopy(doc)
    for rs in out.get("recordSet", []):
        for f in rs.get("field") or []:
            prune(f, False)
    return out


@contextmanager
def readable_dataset(path: Path) -> Iterator[Any]:
    """`mlcroissant.Dataset` of a bundle's croissant.json as mlcroissant can read it (see
    `_readable_copy`), from a copy outside the bundle (validate never writes into it)."""
    import tempfile

    import mlcroissant as mlc

    doc = _readable_copy(json.loads(path.read_text(encoding="utf-8")))
    with tempfile.TemporaryDirectory(prefix="cxrctx-croissant-") as tmp:
        for sub in ("data", "exports"):  # files are read in place, through links (real
            for f in sorted((path.parent / sub).rglob("*")):  # folders: mlcroissant's walk)
                link = Path(tmp) / f.relative_to(path.parent)
                if f.is_file() and not f.is_symlink():
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.symlink_to(f.resolve())
        copy_path = Path(tmp) / "croissant.json"
        copy_path.write_text(json.dumps(doc), encoding="utf-8")
        yield mlc.Dataset(jsonld=str(copy_path))


def _load_problems(path: Path, record_sets: list[str], n_records: int) -> list[str]:
    """Read the first records of every record set with mlcroissant; all columns present."""
    out: list[str] = []
    with readable_dataset(path) as ds:
        for rs in record_sets:
            fields = {f.id for r in ds.metadata.record_sets if r.id == rs for f in r.fields}
            try:
                n = 0
                for i, rec in enumerate(ds.records(record_set=rs)):
                    n = i + 1
                    if set(rec) != fields:
                        missing = sorted(fields - set(rec))
                        out.append(f"{path}: record set {rs} loads without {missing}")
                        break
                    if i + 1 >= n_records:
                        break
                if n == 0:
                    out.append(f"{path}: record set {rs} loads no record with mlcroissant")
            except Exception as e:  # mlcroissant raises many error types while reading
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                out.append(
                    f"{path}: record set {rs} does not load with mlcroissant ({first[:200]})"
                )
    return out
