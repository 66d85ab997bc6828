"""`validate`: everything that can be checked about a stage folder or a release, as a list.

Checks: the manifest (stage, completeness) and every listed file (present, readable, row
count, sha256, nothing unlisted); the columns against the published JSON Schema in
`schemas/` (read via `cxrctx.resources`); counts that must reconcile; the invariants
(study ids unique, priors strictly earlier and of the same subject and split, no split
crosses a patient, label enums valid, 14 labels per study, every label id a record); and
for releases the public whitelist (no free-text column), every public column's contents
against its type (ids, checksums, image paths, enums; no date anywhere), the card and
croissant.json against what the manifest renders (a hand edit or injected text shows), the
Croissant through `mlcroissant` (fields equal to the Parquet columns, every record set
loads), and a `.staging-*` folder a killed `release` left (it may hold report text).
Every manifest path is checked first: one that leaves the folder is refused, unread.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from cxrctx.errors import CxrctxError
from cxrctx.io import Stage, check_stage, load_stage
from cxrctx.output_policy import RUN_MARKER
from cxrctx.release import tables as T
from cxrctx.release.release import stale_staging
from cxrctx.release.render import metadata_problems
from cxrctx.release.trust import (
    column_problems,
    path_problem,
    path_problems,
    text_date_problems,
)
from cxrctx.resources import read_bytes
from cxrctx.vocab import LESIONS, LOCATIONS

#: JSON Schema type → the polars dtypes a column of that type may have.
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "integer": (pl.Int64, pl.Int32, pl.Int16, pl.Int8, pl.UInt64, pl.UInt32),
    "number": (pl.Float64, pl.Float32, pl.Int64),
    "string": (pl.String, pl.Datetime, pl.Date, pl.Categorical, pl.Enum),
    "boolean": (pl.Boolean,),
    "array": (pl.List, pl.Array),
    "object": (pl.Struct,),
}
#: Main table of a stage (or release table) → the schema file its rows follow.
SCHEMA_OF = {
    "build-priors": "record",
    "records": "record",
    "label-lesions": "label_row",
    "labels_long": "label_row",
    "build-rois": "roi_row",
    "rois": "roi_row",
}


@dataclass
class ValidationReport:
    path: str
    stage: str | None = None
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# ------------------------------------------------------------------ schema


def schema_problems(
    df_schema: Mapping[str, pl.DataType], schema_name: str, where: str, *, public: bool = False
) -> list[str]:
    """Columns of a table against `schemas/<name>.schema.json`: required present, types fit."""
    try:
        schema = json.loads(read_bytes("schemas", f"{schema_name}.schema.json"))
    except CxrctxError as e:
        return [str(e)]
    props: dict = schema.get("properties", {})
    required = [c for c in schema.get("required", []) if not (public and c in _PRIVATE)]
    out = [
        f"{where}: column {c!r} required by {schema_name}.schema.json is missing"
        for c in required
        if c not in df_schema
    ]
    for col, dtype in df_schema.items():
        spec = props.get(col)
        if spec is None:
            continue
        types = {spec["type"]} if "type" in spec else {a.get("type") for a in spec.get("anyOf", [])}
        types.discard("null")
        types.discard(None)
        if types and not any(
            isinstance(dtype, _JSON_TYPES.get(t, ())) or dtype in _JSON_TYPES.get(t, ())
            for t in types
        ):
            out.append(
                f"{where}: column {col!r} is {dtype}, {schema_name}.schema.json says {'/'.join(sorted(types))}"
            )
    return out


_PRIVATE = {
    "rationale",
    "backend",
    "model",
    "prompt_sha256",
    "schema_sha256",
    "sampling",
    "sentences",
}


# ------------------------------------------------------------------ invariants


def record_problems(rec: pl.DataFrame, where: str) -> list[str]:
    """Ids unique; priors strictly earlier, same subject, same split; one split per patient."""
    out: list[str] = []
    dup = (
        rec.filter(pl.col("study_id").is_duplicated())["study_id"].unique().sort().head(3).to_list()
    )
    if dup:
        out.append(f"{where}: duplicate study_id(s) {', '.join(map(str, dup))}")
    crossing = (
        rec.filter(pl.col("split").is_not_null())
        .group_by("subject_id")
        .agg(pl.col("split").n_unique().alias("n"))
        .filter(pl.col("n") > 1)["subject_id"]
        .sort()
        .head(3)
        .to_list()
    )
    if crossing:
        out.append(f"{where}: split crosses patient(s) {', '.join(map(str, crossing))}")
    if "priors" in rec.columns:
        pri = rec.select("study_id", "subject_id", "split", "study_datetime", "priors").explode(
            "priors"
        )
        pri = pri.filter(pl.col("priors").is_not_null()).with_columns(
            pl.col("priors").struct.field("study_id").alias("p_id"),
            pl.col("priors").struct.field("study_datetime").alias("p_dt"),
            pl.col("priors").struct.field("days_before").alias("p_days"),
        )
        later = pri.filter(
            (pl.col("p_dt") >= pl.col("study_datetime"))
            | (pl.col("p_days") < 0)
            | (pl.col("p_id") == pl.col("study_id"))
        )
        if later.height:
            out.append(
                f"{where}: {later.height} prior(s) not strictly earlier than their study (e.g. study {later['study_id'][0]}, prior {later['p_id'][0]})"
            )
        ids = pri.select("study_id", "subject_id", "split", "p_id")
    elif "prior_study_ids" in rec.columns:
        ids = (
            rec.select("study_id", "subject_id", "split", pl.col("prior_study_ids").alias("p_id"))
            .explode("p_id")
            .drop_nulls("p_id")
        )
        self_ = ids.filter(pl.col("p_id") == pl.col("study_id"))
        if self_.height:
            out.append(f"{where}: study {self_['study_id'][0]} lists itself as a prior")
    else:
        return out
    known = rec.select(
        pl.col("study_id").alias("p_id"),
        pl.col("subject_id").alias("p_subject"),
        pl.col("split").alias("p_split"),
    )
    joined = ids.join(known, on="p_id", how="inner")
    other = joined.filter(pl.col("p_subject") != pl.col("subject_id"))
    if other.height:
        out.append(
            f"{where}: {other.height} prior(s) of another patient (e.g. study {other['study_id'][0]}, prior {other['p_id'][0]})"
        )
    split = joined.filter(pl.col("p_split").ne_missing(pl.col("split")))
    if split.height:
        out.append(
            f"{where}: {split.height} prior(s) in another split (e.g. study {split['study_id'][0]})"
        )
    return out


def label_problems(lab: pl.DataFrame, where: str, record_ids: pl.Series | None) -> list[str]:
    """Enums valid, 14 rows per id (one per lesion), every id a record."""
    out: list[str] = []
    for col, allowed in (("lesion", LESIONS), ("status", T.STATUSES), ("location", LOCATIONS)):
        if col in lab.columns:
            bad = lab.filter(~pl.col(col).is_in(list(allowed)))[col].unique().head(3).to_list()
            if bad:
                out.append(f"{where}: invalid {col} value(s) {', '.join(map(repr, bad))}")
    per = lab.group_by("id").agg(pl.len().alias("n"), pl.col("lesion").n_unique().alias("u"))
    bad_ids = (
        per.filter((pl.col("n") != len(LESIONS)) | (pl.col("u") != len(LESIONS)))["id"]
        .head(3)
        .to_list()
    )
    if bad_ids:
        out.append(
            f"{where}: id(s) without exactly one row per lesion: {', '.join(map(str, bad_ids))}"
        )
    if record_ids is not None:
        ids = lab.select(pl.col("id").cast(pl.Int64, strict=False)).unique()
        orphan = ids.filter(pl.col("id").is_null() | ~pl.col("id").is_in(record_ids.implode()))
        if orphan.height:
            ex = (
                lab.filter(
                    ~pl.col("id")
                    .cast(pl.Int64, strict=False)
                    .is_in(record_ids.implode())
                    .fill_null(False)
                    | pl.col("id").cast(pl.Int64, strict=False).is_null()
                )["id"]
                .unique()
                .sort()
                .head(3)
                .to_list()
            )
            out.append(
                f"{where}: labels for {orphan.height} id(s) that are not records (e.g. {', '.join(map(str, ex))})"
            )
    return out


# ------------------------------------------------------------------ stage folders


def _read_files(st: Stage, prefix: str | None = None) -> pl.DataFrame | None:
    files = [
        st.dir / s.path for s in st.manifest.shards if prefix is None or s.path.startswith(prefix)
    ]
    files = [f for f in files if f.suffix == ".parquet"]
    if not files:
        return None
    return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")


def _file_schema_problems(
    st: Stage, prefix: str, schema_name: str, *, public: bool = False
) -> list[str]:
    """Schema check of each file on its own (a concatenation would hide a missing column)."""
    out = []
    for s in st.manifest.shards:
        f = st.dir / s.path
        if s.path.startswith(prefix) and f.suffix == ".parquet":
            out += schema_problems(pl.read_parquet_schema(f), schema_name, str(f), public=public)
    return out


def _stage_checks(st: Stage, rep: ValidationReport, records: str | os.PathLike | None) -> None:
    m, where = st.manifest, str(st.dir)
    df = _read_files(st)
    if df is None:
        rep.problems.append(f"{where}: the manifest lists no shards")
        return
    if st.name in SCHEMA_OF:
        rep.problems += _file_schema_problems(st, "", SCHEMA_OF[st.name])
        rep.checked.append(f"schema {SCHEMA_OF[st.name]}.schema.json")
    if st.name == "build-priors":
        c = m.counts
        if c.get("records") is not None and c["records"] != df.height:
            rep.problems.append(
                f"{where}: manifest counts {c['records']} records, shards hold {df.height}"
            )
        if {"studies_in", "records", "rejected_studies"} <= set(c) and c["studies_in"] != c[
            "records"
        ] + c["rejected_studies"]:
            rep.problems.append(
                f"{where}: studies_in {c['studies_in']} != records {c['records']} + rejected {c['rejected_studies']}"
            )
        rep.problems += record_problems(df, where)
        rep.checked.append("record invariants")
    if st.name == "label-lesions":
        rec_ids = None
        if records is not None:
            rec_ids = load_stage(records).read()["study_id"]
        labeled = m.counts.get("labeled")
        if labeled is not None and df.height != labeled * len(LESIONS):
            rep.problems.append(
                f"{where}: {df.height} label rows, manifest counts {labeled} labeled documents × 14"
            )
        rep.problems += label_problems(df, where, rec_ids)
        rep.checked.append("label invariants")


# ------------------------------------------------------------------ releases


def card_problems(bundle: Path, st: Stage) -> list[str]:
    """Every card config path matches files; every data file is in a config."""
    card = bundle / "README.md"
    if not card.is_file():
        return [f"{card}: missing dataset card"]
    text = card.read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        return [f"{card}: no YAML front matter"]
    yaml = text.split("\n---\n", 1)[0]
    globs = re.findall(r"^    path: (\S+)$", yaml, flags=re.M)
    out = []
    covered: set[str] = set()
    for g in globs:
        if path_problem(g) is not None:
            out.append(f"{card}: config path {g!r} leaves the bundle")
            continue
        hits = {p.relative_to(bundle).as_posix() for p in bundle.glob(g)}
        if not hits:
            out.append(f"{card}: config path {g} matches no file")
        covered |= hits
    for s in st.manifest.shards:
        if s.path not in covered:
            out.append(f"{bundle / s.path}: not in any config of {card.name}")
    return out


def public_problems(bundle: Path, st: Stage) -> list[str]:
    """No column outside the whitelist; enum columns hold enum values only."""
    out: list[str] = []
    enums = T.enum_values()
    for s in st.manifest.shards:
        f = bundle / s.path
        if f.suffix != ".parquet" or not f.is_file():
            out.append(f"{f}: a public file that is not Parquet")
            continue
        df = pl.read_parquet(f)
        for col in df.columns:
            if col not in T.PUBLIC_COLUMNS:
                out.append(f"{f}: column {col!r} is not allowed in a public bundle (free text?)")
        out += column_problems(df, str(f))
        for col, allowed in enums.items():
            if col in df.columns:
                vals = df[col].explode() if isinstance(df.schema[col], pl.List) else df[col]
                bad = (
                    vals.drop_nulls()
                    .filter(~vals.drop_nulls().is_in(list(allowed)))
                    .unique()
                    .head(3)
                    .to_list()
                )
                if bad:
                    out.append(
                        f"{f}: column {col!r} holds non-enum value(s) {', '.join(map(repr, bad))}"
                    )
        for col in df.columns:
            if col.endswith(("_status", "_location")) and df.schema[col] == pl.String:
                allowed_v = T.STATUSES if col.endswith("_status") else LOCATIONS
                bad = (
                    df[col]
                    .drop_nulls()
                    .filter(~df[col].drop_nulls().is_in(list(allowed_v)))
                    .head(1)
                    .to_list()
                )
                if bad:
                    out.append(f"{f}: column {col!r} holds non-enum value {bad[0]!r}")
    return out


def _bundle_checks(st: Stage, rep: ValidationReport) -> None:

    bundle, public = st.dir, st.name == "release-public"
    rep.problems += card_problems(bundle, st)
    rep.checked.append("card configs")
    rep.problems += metadata_problems(st)
    rep.checked.append("card and croissant.json as the manifest renders them, mlcroissant")
    if public:
        rep.problems += public_problems(bundle, st)
        for name in ("README.md", "croissant.json", "manifest.json"):
            f = bundle / name
            if f.is_file():
                rep.problems += text_date_problems(f.read_text(encoding="utf-8"), str(f))
        rep.checked.append("public whitelist and column contents, no dates")
    main = _read_files(st, "data/studies/" if public else "data/records/")
    if main is None:
        rep.problems.append(f"{bundle}: no {'studies' if public else 'records'} table")
        return
    if not public:
        rep.problems += _file_schema_problems(st, "data/records/", "record")
    rep.problems += record_problems(main, f"{bundle}/data/{'studies' if public else 'records'}")
    long = _read_files(st, "data/labels_long/")
    if long is not None:
        if not public:
            rep.problems += _file_schema_problems(st, "data/labels_long/", "label_row")
        rep.problems += label_problems(long, f"{bundle}/data/labels_long", main["study_id"])
        wide = _read_files(st, "data/labels_wide/")
        if wide is not None and wide.height != long["id"].n_unique():
            rep.problems.append(
                f"{bundle}/data/labels_wide: {wide.height} rows, labels_long has {long['id'].n_unique()} studies"
            )
    rep.checked.append("release invariants")


def staging_problems(folder: Path) -> list[str]:
    """A `.staging-*` folder a killed release left beside the bundles (it may hold report text)."""

    if not (folder / RUN_MARKER).is_file() and not (folder / "public").is_dir():
        return []
    return [
        f"{d}: unfinished staging folder of a killed release (may hold credentialed report "
        "text): re-run the release or delete it"
        for d in stale_staging(folder)
    ]


def validate(
    path: str | os.PathLike, *, records: str | os.PathLike | None = None
) -> ValidationReport:
    """Validate a stage output folder, a release bundle, or a release folder (both bundles)."""
    p = Path(path)
    if p.is_dir() and not (p / "manifest.json").exists() and (p / "public").is_dir():
        reps = [validate(p / b) for b in ("public", "credentialed") if (p / b).exists()]
        return ValidationReport(
            str(p),
            "release",
            list(dict.fromkeys([*staging_problems(p), *(x for r in reps for x in r.problems)])),
            [x for r in reps for x in r.checked],
        )
    rep = ValidationReport(str(p))
    try:
        st = load_stage(p)
    except CxrctxError as e:
        rep.problems.append(str(e))
        return rep
    rep.stage = st.name
    rep.problems += path_problems(st)
    rep.checked.append("manifest paths stay inside the folder")
    if rep.problems:
        return rep
    if st.name.startswith("release-"):
        rep.problems += staging_problems(st.dir.parent)
    rep.problems += check_stage(st, verify="sha256")
    rep.checked.append("files: presence, rows, sha256")
    if rep.problems:
        return rep
    if st.name.startswith("release-"):
        _bundle_checks(st, rep)
    else:
        _stage_checks(st, rep, records)
    return rep
