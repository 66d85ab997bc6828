"""A downloaded bundle is untrusted input: its paths and its public contents are checked.

Nobody signs a release, so every field of a bundle may be crafted. Paths: a manifest path
must be relative, in POSIX form, without `..`, and no file it names may be (or sit under) a
symbolic link, so reading a bundle never leaves it (`open_bundle`, used by `validate`,
`info` and `rebuild`). Contents: every public column holds exactly what its type allows
(`column_problems`): 64-hex checksums, MIMIC-CXR id patterns (subject ids are 8 digits
starting with 1, study ids 8 digits starting with 5, dicom ids five dash-joined groups of
8 hex digits), image paths of the MIMIC layout `files/pNN/pSSSSSSSS/sTTTTTTTT/<dicom_id>.(dcm|jpg)`
that agree with the row's ids, enums, counts; and no string anywhere looks like a date.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import polars as pl

from cxrctx.errors import CxrctxError
from cxrctx.io import Stage, load_stage, open_stage
from cxrctx.release import tables as T
from cxrctx.vocab import DICOM_ID_RE, IMAGE_RELPATH_RE, SHA256_RE, STUDY_ID_RE

#: Dates as a person (or a report) writes them: ISO, US, compact, month names. Years
#: 1800–2299 cover real and MIMIC's shifted dates; ids never match (5xxxxxxx, p1xxxxxxx,
#: 8-hex dicom groups: a compact date must stand alone, a separated one needs 2-4 digits).
DATE_RE = re.compile(
    r"(?<!\d)(?:1[89]|2[0-2])\d{2}[-/._ ](?:0?[1-9]|1[0-2])[-/._ ](?:0?[1-9]|[12]\d|3[01])(?!\d)"
    r"|(?<!\d)(?:0?[1-9]|1[0-2])[-/_ ](?:0?[1-9]|[12]\d|3[01])[-/_ ](?:\d{4}|\d{2})(?!\d)"
    r"|(?<![\w.-])(?:1[89]|2[0-2])\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])(?![\w.-])"
    r"|\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?\s+\d{1,2}(?:st|nd|rd|th)?\b",
    re.I,
)


def date_in(text: str) -> str | None:
    """The first date-like piece of `text`, or None."""
    m = DATE_RE.search(text)
    return m.group(0) if m else None


# ------------------------------------------------------------------ paths


def path_problem(path: str) -> str | None:
    """Why a manifest path may leave its bundle, or None when it is a plain relative path."""
    if not isinstance(path, str) or not path or "\\" in path or "\x00" in path:
        return "not a plain relative path"
    p = PurePosixPath(path)
    if p.is_absolute() or re.match(r"^[A-Za-z]:", path):
        return "an absolute path"
    if ".." in p.parts:
        return "leaves the bundle ('..')"
    return None


def _link_under(base: Path, rel: str) -> Path | None:
    """The first symbolic link on the way from `base` to `base/rel`, or None."""
    cur = base
    for part in PurePosixPath(rel).parts:
        cur = cur / part
        if cur.is_symlink():
            return cur
    return None


def manifest_paths(st: Stage) -> Iterable[tuple[str, str, Path]]:
    """(what, path, base folder) of every path a bundle manifest names."""
    m = st.manifest
    for what, entries in (("shard", m.shards), ("table", m.tables), ("file", m.files)):
        for e in entries:
            yield what, e.path, st.dir
    for e in m.extra.get("credentialed_files", []) or []:
        yield "credentialed file", str(e.get("path") if isinstance(e, dict) else e), st.dir
    for name, prov in (m.extra.get("stages") or {}).items():
        if not isinstance(prov, dict):
            continue
        for key in ("inputs", "shards", "tables", "files"):
            for e in prov.get(key) or []:
                p = e.get("path") if isinstance(e, dict) else e
                yield f"{name} {key[:-1]}", str(p), st.dir


def path_problems(st: Stage) -> list[str]:
    """Every manifest path that is absolute, climbs out with `..`, or meets a symlink."""
    out: list[str] = []
    mname = st.manifest_paths[0] if st.manifest_paths else st.dir / "manifest.json"
    for what, path, base in manifest_paths(st):
        why = path_problem(path)
        if why is None and what in ("shard", "table", "file"):
            link = _link_under(base, path)
            if link is not None:
                why = f"a symbolic link ({link.name}) in a bundle"
        if why is not None:
            out.append(f"{mname}: {what} path {path!r} refused: {why}")
    return out


def open_bundle(path: str | os.PathLike, expect: str | None, *, verify: str = "sha256") -> Stage:
    """`open_stage` for an untrusted bundle: its paths are checked before any file is read."""
    st = load_stage(path)
    problems = path_problems(st)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CxrctxError(problems[0] + more)
    return open_stage(st.dir, expect or None, verify=verify)


def safe_join(base: Path, rel: str, what: str) -> Path:
    """`base/rel` for a path a bundle names; refused when it would leave `base`."""
    why = path_problem(rel)
    if why is not None:
        raise CxrctxError(f"the release's {what} {rel!r} is refused: {why}")
    return base / rel


# ------------------------------------------------------------------ contents


def _strings(s: pl.Series) -> pl.Series:
    """Every string inside a column (lists and structs flattened)."""
    dt = s.dtype
    if isinstance(dt, pl.List | pl.Array):
        return _strings(s.explode())
    if isinstance(dt, pl.Struct):
        parts = [_strings(s.struct.field(f.name)) for f in dt.fields]
        parts = [p for p in parts if p.len()]
        return pl.concat(parts) if parts else pl.Series([], dtype=pl.String)
    if dt == pl.String:
        return s.drop_nulls()
    return pl.Series([], dtype=pl.String)


def _temporal(dt: Any) -> bool:
    if isinstance(dt, pl.List | pl.Array):
        return _temporal(dt.inner)
    if isinstance(dt, pl.Struct):
        return any(_temporal(f.dtype) for f in dt.fields)
    return isinstance(dt, pl.Date | pl.Datetime | pl.Time | pl.Duration)


def _bad(s: pl.Series, ok: pl.Series) -> list[Any]:
    return s.filter(~ok.fill_null(False)).unique(maintain_order=True).head(3).to_list()


def _int_range(s: pl.Series, lo: int, hi: int) -> list[Any]:
    if not s.dtype.is_integer():
        return [f"dtype {s.dtype}"]
    v = s.drop_nulls()
    return _bad(v, (v >= lo) & (v <= hi))


def _regex(s: pl.Series, rx: re.Pattern[str]) -> list[Any]:
    if s.dtype != pl.String:
        return [f"dtype {s.dtype}"]
    v = s.drop_nulls()
    return _bad(v, v.str.contains(rx.pattern))


_SUBJECT = (10_000_000, 19_999_999)
_STUDY = (50_000_000, 59_999_999)


def _column_check(df: pl.DataFrame, col: str) -> list[Any]:
    """Values of one public column that its type does not allow (a few examples)."""
    s, kind = df[col], T.PUBLIC_COLUMNS[col]
    if col == "subject_id":
        return _int_range(s, *_SUBJECT)
    if col == "study_id":
        return _int_range(s, *_STUDY)
    if col == "prior_study_ids":
        if not isinstance(s.dtype, pl.List):
            return [f"dtype {s.dtype}"]
        return _int_range(s.explode(), *_STUDY)
    if col == "id":
        return _regex(s, STUDY_ID_RE)
    if col == "dicom_id":
        return _regex(s, DICOM_ID_RE)
    if col == "path":
        return _path_check(df)
    if col == "report_sha256":
        return _regex(s, SHA256_RE)
    if kind == "count":
        return _int_range(s, 0, 1 << 31)
    if kind == "bool":
        return [] if s.dtype == pl.Boolean else [f"dtype {s.dtype}"]
    if kind in ("enum", "enum list"):
        inner = s.dtype.inner if isinstance(s.dtype, pl.List) else s.dtype  # type: ignore[union-attr]
        return [] if inner == pl.String else [f"dtype {s.dtype}"]
    return []


def _path_check(df: pl.DataFrame) -> list[Any]:
    """Image paths: the MIMIC layout, and the same ids as the row's columns."""
    s = df["path"]
    bad = _regex(s, IMAGE_RELPATH_RE)
    if bad or not {"subject_id", "study_id", "dicom_id"} <= set(df.columns):
        return bad
    want = pl.format(
        "files/p{}/p{}/s{}/{}.",
        pl.col("subject_id").cast(pl.String).str.slice(0, 2),
        "subject_id",
        "study_id",
        "dicom_id",
    )
    off = df.filter(pl.col("path").is_not_null() & ~pl.col("path").str.starts_with(want))
    return off["path"].head(3).to_list()


def column_problems(df: pl.DataFrame, where: str) -> list[str]:
    """Every public column against its type, and no date-like string anywhere."""
    out: list[str] = []
    for col in df.columns:
        if col not in T.PUBLIC_COLUMNS:
            continue  # the whitelist check reports it
        if _temporal(df.schema[col]):
            out.append(f"{where}: column {col!r} holds dates ({df.schema[col]})")
            continue
        bad = _column_check(df, col)
        if bad:
            shown = ", ".join(repr(b)[:80] for b in bad)
            out.append(f"{where}: column {col!r} holds value(s) its type does not allow: {shown}")
        dates = [d for v in _strings(df[col]).unique().to_list() if (d := date_in(v))]
        if dates:
            out.append(f"{where}: column {col!r} holds a date-like value ({dates[0]!r})")
    return out


def text_date_problems(text: str, where: str) -> list[str]:
    """A date-like string in a public card, croissant or manifest."""
    d = date_in(text)
    return [f"{where}: holds a date-like value ({d!r})"] if d else []
