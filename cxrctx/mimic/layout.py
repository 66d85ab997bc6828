"""Find the pieces of a MIMIC-CXR root and read its CSVs strictly.

Every CSV is read with all columns as strings (StudyTime must never go through a float),
then validated; a problem raises `CxrctxError` naming the file and line (line 1 is the
header, so the first data row is line 2).
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import re
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl

from cxrctx.errors import CxrctxError
from cxrctx.vocab import (  # the MIMIC-CXR layout facts, re-exported for this stage
    CHEXPERT_LABELS,
    LABEL_COLUMNS,
    LABEL_KEYS,
    METADATA_COLUMNS,
    PREFIX,
    REPORT_RE,
    SPLIT_COLUMNS,
    SPLITS,
    image_relpath,
    label_key,
    report_relpath,
)

__all__ = [
    "LABEL_COLUMNS",
    "LABEL_KEYS",
    "METADATA_COLUMNS",
    "PREFIX",
    "REPORT_RE",
    "SPLITS",
    "SPLIT_COLUMNS",
    "image_relpath",
    "image_relpath_expr",
    "label_key",
    "report_relpath",
    "report_relpath_expr",
]


def _study_prefix() -> pl.Expr:
    """`files/pNN/pSSSSSSSS/sTTTTTTTT` of each row (subject_id, study_id): the column form
    of the prefix `report_relpath` and `image_relpath` build for one study."""
    subject = pl.col("subject_id").cast(pl.String)
    return (
        pl.lit("files/p")
        + subject.str.slice(0, 2)
        + "/p"
        + subject
        + "/s"
        + pl.col("study_id").cast(pl.String)
    )


def report_relpath_expr() -> pl.Expr:
    """Column form of `report_relpath`: each study's report file, relative to the root."""
    return _study_prefix() + ".txt"


def image_relpath_expr(ext: str) -> pl.Expr:
    """Column form of `image_relpath`: each image's file (with `dicom_id`), relative to the root."""
    return _study_prefix() + "/" + pl.col("dicom_id") + f".{ext}"


@dataclass(frozen=True)
class MimicLayout:
    """Where each input of a MIMIC-CXR root lives (None when absent)."""

    root: Path
    metadata: Path | None
    split: Path | None
    chexpert: Path | None
    negbio: Path | None
    files_dir: Path | None
    reports_zip: Path | None

    @property
    def reports_source(self) -> Literal["files", "zip"]:
        return "zip" if self.reports_zip is not None else "files"


def _find(root: Path, stem: str) -> Path | None:
    for name in (f"{PREFIX}{stem}.csv.gz", f"{PREFIX}{stem}.csv"):
        p = root / name
        if p.is_file():
            return p
    return None


def discover(
    root: str | os.PathLike,
    reports_zip: str | os.PathLike | None = None,
    *,
    need_metadata: bool = True,
) -> MimicLayout:
    """Locate the CSVs, the `files/` tree and the reports zip under `root`.

    Reports come from `reports_zip` when given, else from `files/` when it holds any
    report, else from `root/mimic-cxr-reports.zip` when present.
    """
    r = Path(root)
    if not r.exists():
        raise CxrctxError(f"{r}: MIMIC-CXR root does not exist")
    if not r.is_dir():
        raise CxrctxError(f"{r}: MIMIC-CXR root is not a directory")
    metadata = _find(r, "metadata")
    if need_metadata and metadata is None:
        raise CxrctxError(
            f"{r / (PREFIX + 'metadata.csv.gz')}: metadata CSV not found (or pass --scan-dicom to read DICOM headers)"
        )
    files_dir = r / "files" if (r / "files").is_dir() else None
    zip_path: Path | None = None
    if reports_zip is not None:
        zip_path = _resolve_zip(r, Path(reports_zip))
    elif (files_dir is None or not _has_report(files_dir)) and (
        r / "mimic-cxr-reports.zip"
    ).is_file():
        zip_path = r / "mimic-cxr-reports.zip"
    if zip_path is None and files_dir is None:
        raise no_reports_error(r, None)
    return MimicLayout(
        root=r,
        metadata=metadata,
        split=_find(r, "split"),
        chexpert=_find(r, "chexpert"),
        negbio=_find(r, "negbio"),
        files_dir=files_dir,
        reports_zip=zip_path,
    )


def _resolve_zip(root: Path, given: Path) -> Path:
    """A relative zip path is looked up under the root first, then in the working directory."""
    places = [given] if given.is_absolute() else [root / given, given]
    for p in places:
        if p.is_file():
            return p
    where = " or ".join(str(p if p.is_absolute() else Path.cwd() / p) for p in places)
    raise CxrctxError(f"{given}: reports zip not found (looked for {where})")


def no_reports_error(root: Path, zip_path: Path | None) -> CxrctxError:
    """The one message for a root without any report, naming where we looked."""
    where = (
        f"{zip_path} has no files/pNN/pNNNNNNNN/sNNNNNNNN.txt entries"
        if zip_path is not None
        else f"{root / 'files'} holds no sNNNNNNNN.txt report and {root / 'mimic-cxr-reports.zip'} does not exist"
    )
    return CxrctxError(
        f"{root}: no reports found: {where}. Reports come from the MIMIC-CXR project on "
        "PhysioNet (files/ with reports, or mimic-cxr-reports.zip), not from MIMIC-CXR-JPG, "
        "whose files/ holds images only"
    )


def _has_report(files_dir: Path, sample: int = 50) -> bool:
    """Whether files/ holds reports: looks at the first `sample` patient folders only.

    Every patient of MIMIC-CXR has a report beside its image folders; MIMIC-CXR-JPG's
    files/ has none, and walking its 65k folders to find that out would be slow.
    """
    seen = 0
    for group in sorted(files_dir.iterdir()):
        if not group.is_dir():
            continue
        for patient in sorted(group.iterdir()):
            if not patient.is_dir():
                continue
            if any(p.suffix == ".txt" for p in patient.iterdir()):
                return True
            seen += 1
            if seen >= sample:
                return False
    return False


# --- CSV reading ------------------------------------------------------------------------


def read_input_bytes(path: Path) -> bytes:
    """Whole file, gunzipped in memory when it ends in .gz; a corrupt gzip is a user error."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CxrctxError(f"{path}: cannot read: {e.strerror or e}") from None
    if path.suffix == ".gz":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise CxrctxError(f"{path}: corrupt gzip file: {e}") from None
    return raw


_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
#: Every byte but the control characters above (for a fast `bytes.translate` check).
_NOT_CONTROL = bytes(b for b in range(256) if not _CONTROL.match(bytes([b])))


def _check_bytes(path: Path, data: bytes) -> None:
    """UTF-8 without control characters (tab, CR and LF aside), else name the line."""
    if not data.isascii():  # ASCII (all of MIMIC's CSVs) is UTF-8: skip the decoding
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            raise CxrctxError(
                f"{path}: line {line}: not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})"
            ) from None
    if not data.translate(None, _NOT_CONTROL):  # deleting the allowed bytes leaves nothing
        return
    m = _CONTROL.search(data)
    if m:
        line = data.count(b"\n", 0, m.start()) + 1
        raise CxrctxError(f"{path}: line {line}: control character 0x{data[m.start()]:02x}")


def _record_lines(path: Path, data: bytes, width: int) -> list[int]:
    """Physical first line of each data record, read quote-aware (a quoted field may hold a
    newline); a record with the wrong field count or an unbalanced quote names its line."""
    reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""), strict=True)
    starts: list[int] = []
    end = 0
    try:
        for row in reader:
            start, end = end + 1, reader.line_num
            if not row:
                continue
            if len(row) != width:
                raise CxrctxError(
                    f"{path}: line {start}: malformed row: expected {width} fields, found {len(row)}"
                )
            starts.append(start)
    except csv.Error as e:
        raise CxrctxError(
            f"{path}: line {end + 1}: malformed CSV: {e} (an unbalanced quote?)"
        ) from None
    return starts[1:]  # the header is line 1


def _scan_lines(data: bytes, width: int) -> tuple[bool, tuple[int, int] | None]:
    """(a line has an odd number of quotes, (line, fields) of the first ragged line).

    Vectorised: each line is one string (read with a separator that never occurs: control
    characters were refused before), quoted parts are removed, and commas are counted.
    An odd quote count means a quoted field spans lines (or a quote is unbalanced): the
    caller then reads quote-aware instead, and the ragged answer is not computed.
    """
    lines = pl.read_csv(
        io.BytesIO(data),
        has_header=False,
        separator="\x1f",
        quote_char=None,
        infer_schema=False,
        new_columns=["l"],
    )["l"]
    quoted = b'"' in data  # MIMIC's CSVs have no quotes: skip the quote work then
    if quoted and (lines.str.count_matches('"', literal=True) % 2 == 1).any():
        return True, None
    if b"\r" in data:
        lines = lines.str.strip_chars_end("\r")
    bare = lines.str.replace_all(r'"[^"]*"', "") if quoted else lines
    fields = bare.str.count_matches(",", literal=True) + 1
    bad = ((fields != width) & (lines.str.len_bytes() > 0)).fill_null(False)
    if not bad.any():
        return False, None
    i = int(bad.arg_true()[0])
    return False, (i + 1, int(fields[i]))


def read_csv(path: Path, required: Sequence[str]) -> pl.DataFrame:
    """Read a CSV (gz or plain) as strings, check columns and row shapes; adds `_line`."""
    data = read_input_bytes(path)
    if not data.strip():
        raise CxrctxError(f"{path}: file is empty")
    header_line = data.split(b"\n", 1)[0].decode("utf-8", errors="replace").strip("\r\n\ufeff")
    header = next(csv.reader([header_line]))
    missing = [c for c in required if c not in header]
    if missing:
        raise CxrctxError(
            f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(header)})"
        )
    _check_bytes(path, data)
    # A quoted field over several lines needs a quote-aware (slower) reading; MIMIC has none.
    multiline, ragged = _scan_lines(data, len(header))
    starts = _record_lines(path, data, len(header)) if multiline else None
    if ragged is not None:
        line, n = ragged
        raise CxrctxError(
            f"{path}: line {line}: malformed row: expected {len(header)} fields, found {n}"
        )
    try:
        df = pl.read_csv(io.BytesIO(data), infer_schema=False)
    except pl.exceptions.PolarsError as e:
        where = None if multiline else _scan_lines(data, len(header))[1]
        detail = (
            f"line {where[0]}: expected {len(header)} fields, found {where[1]}"
            if where
            else str(e).splitlines()[0]
        )
        raise CxrctxError(f"{path}: malformed CSV: {detail}") from None
    if starts is not None and len(starts) == df.height:
        return df.with_columns(pl.Series("_line", starts, dtype=pl.UInt32)).select(
            "_line", *df.columns
        )
    return df.with_row_index("_line", offset=2)


def _require_int(
    df: pl.DataFrame, path: Path, cols: Sequence[str], *, nullable: bool = False
) -> pl.DataFrame:
    """Cast string columns to Int64; a value that is not an integer is a malformed row."""
    for c in cols:
        raw = df[c].str.strip_chars()
        # Accept "123" and "123.0" (some exports write floats), nothing else.
        parsed = raw.str.replace(r"\.0+$", "").cast(pl.Int64, strict=False)
        present = (raw.is_not_null() & (raw != "")).fill_null(False)
        bad = parsed.is_null() & present if nullable else parsed.is_null()
        if bad.any():
            i = bad.arg_true()[0]
            raise CxrctxError(
                f"{path}: line {df['_line'][i]}: malformed row: {c}={df[c][i]!r} is not an integer"
            )
        df = df.with_columns(parsed.alias(c))
    return df


def read_metadata(path: Path) -> pl.DataFrame:
    """The image table: one row per dicom_id; ids validated, dates/times left as strings."""
    df = read_csv(path, METADATA_COLUMNS)
    nulls = df.filter(pl.col("dicom_id").is_null())
    if nulls.height:
        raise CxrctxError(f"{path}: line {nulls['_line'][0]}: malformed row: empty dicom_id")
    df = _require_int(df, path, ("subject_id", "study_id"))
    df = _require_int(df, path, ("Rows", "Columns"), nullable=True)
    dup = df.filter(pl.col("dicom_id").is_duplicated()).sort("_line")
    if dup.height:
        first = dup["dicom_id"][0]
        lines = dup.filter(pl.col("dicom_id") == first)["_line"].to_list()
        raise CxrctxError(
            f"{path}: duplicate dicom_id {first} on lines {', '.join(map(str, lines))} ({dup['dicom_id'].n_unique()} duplicated id(s))"
        )
    conflict = (
        df.group_by("study_id")
        .agg(pl.col("subject_id").n_unique().alias("n"), pl.col("_line").min())
        .filter(pl.col("n") > 1)
    )
    if conflict.height:
        row = conflict.sort("_line").row(0, named=True)
        raise CxrctxError(
            f"{path}: line {row['_line']}: study_id {row['study_id']} appears under more than one subject_id"
        )
    return df.select((*METADATA_COLUMNS, "_line"))


def read_split(path: Path) -> pl.DataFrame:
    """study_id → split (first value per study; patient-disjoint in MIMIC)."""
    df = read_csv(path, SPLIT_COLUMNS)
    df = _require_int(df, path, ("study_id",))
    bad = df.filter(~pl.col("split").is_in(SPLITS) | pl.col("split").is_null())
    if bad.height:
        row = bad.row(0, named=True)
        raise CxrctxError(
            f"{path}: line {row['_line']}: malformed row: split={row['split']!r} (expected train/validate/test)"
        )
    return df.sort("_line").group_by("study_id", maintain_order=True).agg(pl.col("split").first())


def read_label_csv(path: Path) -> pl.DataFrame:
    """study_id → 14 Float64 label columns (snake_case), values 1.0 / 0.0 / -1.0 / null."""
    df = read_csv(path, LABEL_COLUMNS)
    df = _require_int(df, path, ("subject_id", "study_id"))
    exprs = []
    for name, key in zip(CHEXPERT_LABELS, LABEL_KEYS, strict=True):
        exprs.append(pl.col(name).str.strip_chars().cast(pl.Float64, strict=False).alias(key))
    out = df.with_columns(exprs)
    for name, key in zip(CHEXPERT_LABELS, LABEL_KEYS, strict=True):
        raw = df[name].str.strip_chars()
        bad = out.filter(
            (raw.is_not_null() & raw.ne("")).fill_null(False)
            & ~pl.col(key).is_in([1.0, 0.0, -1.0]).fill_null(False)
        )
        if bad.height:
            line = bad["_line"][0]
            raise CxrctxError(
                f"{path}: line {line}: malformed row: {name}={df.filter(pl.col('_line') == line)[name][0]!r} (expected 1.0, 0.0, -1.0 or blank)"
            )
    dup = out.filter(pl.col("study_id").is_duplicated()).sort("_line")
    if dup.height:
        sid = dup["study_id"][0]
        lines = dup.filter(pl.col("study_id") == sid)["_line"].to_list()
        raise CxrctxError(f"{path}: duplicate study_id {sid} on lines {', '.join(map(str, lines))}")
    return out.select("study_id", *LABEL_KEYS)


# --- reports ----------------------------------------------------------------------------


def zip_report_index(path: Path) -> list[tuple[int, int, str]]:
    """(study_id, subject_id, entry name) of every report entry of the zip (no extraction),
    by study_id, in zip order within a study: a copy filed under another patient is kept
    too, so the study's own report is found whatever the order."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise CxrctxError(f"{path}: not a readable zip file: {e}") from None
    index: list[tuple[int, int, str]] = []
    for info in infos:
        if info.is_dir():
            continue
        m = REPORT_RE.search(info.filename)
        if m:
            index.append((int(m.group(2)), int(m.group(1)), info.filename))
    index.sort(key=lambda e: e[0])  # stable: zip order within a study
    return index


def report_folders(files_dir: Path) -> list[tuple[str, bool]]:
    """(patient folder relative to the root, via a linked folder) for each
    files/pNN/pNNNNNNNN folder, in sorted order.

    `os.scandir` on the two folder levels (its entry types cost no extra system call); the
    ~65k patient folders themselves are listed by the report readers. The flag marks
    folders reached through a symlink: the reader then checks that each report really
    lies inside the root.
    """
    base = str(files_dir)
    with os.scandir(base) as it:
        groups = sorted((e.name, e.is_symlink()) for e in it)
    folders: list[tuple[str, bool]] = []
    for g, g_link in groups:
        if len(g) != 3 or g[0] != "p" or not g[1:].isdigit():
            continue
        try:
            with os.scandir(f"{base}/{g}") as it:
                patients = sorted((e.name, e.is_symlink()) for e in it)
        except NotADirectoryError:
            continue
        folders += [
            (f"files/{g}/{p}", g_link or p_link)
            for p, p_link in patients
            if p[0] == "p" and p[1:].isdigit()
        ]
    return folders
