"""Export formats of the credentialed bundle (`release --format srrg|maira2|jsonl`).

Each is a documented column mapping from a record (one row per study, every split, rows in
record order; a record whose target section is empty keeps a null target rather than
being dropped). They carry report text, so they go to the credentialed bundle only.

srrg (StanfordAIMI SRRG field names)
    id                 study_id as a string
    original_report    the record's canonical sections as `HEADER: text` paragraphs in report
                       order (records keep sections, not the raw file)
    structured_report  from a structure-reports output (`--structured`): `FINDINGS:` and
                       `IMPRESSION:` blocks of its structured text; null without one
    findings_section, impression_section, technique_section, comparison_section
                       the sections of the same name
    history_section    history, else indication
    exam_type_section  examination
    image_paths        image paths relative to the MIMIC-CXR root, frontal first
maira2 (the inputs of MAIRA-2's processor)
    current_frontal, current_lateral   first frontal / lateral image path of the study
    prior_frontal, prior_report        first frontal image path and FINDINGS + IMPRESSION text
                                       of the most recent prior study (null without a prior)
    indication, technique, comparison  the sections of the same name
    target, target_section             the release target section(s)
jsonl (instruction style, one JSON object per line)
    id, instruction (what to write), context (indication, technique, comparison and the most
    recent prior's findings/impression with its interval in days, or "PRIOR STUDY: none"),
    image_paths, target, target_section
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from cxrctx import jsonl
from cxrctx.errors import CxrctxError
from cxrctx.io import atomic_path, sha256_file
from cxrctx.models import ShardInfo
from cxrctx.release import tables as T
from cxrctx.vocab import SECTIONS

FORMATS = ("srrg", "maira2", "jsonl")


def _text(col: str | pl.Expr) -> pl.Expr:
    e = pl.col(col) if isinstance(col, str) else col
    return pl.when(e.is_not_null() & (e.str.strip_chars() != "")).then(e.str.strip_chars())


def _block(header: str, e: pl.Expr) -> pl.Expr:
    return pl.when(_text(e).is_not_null()).then(pl.lit(f"{header}: ") + _text(e))


def target_expr(target: str) -> pl.Expr:
    """The target text: findings, impression, or both as `FINDINGS:`/`IMPRESSION:` blocks."""
    if target == "findings":
        return _text("findings")
    if target == "impression":
        return _text("impression")
    both = pl.concat_str(
        [_block("FINDINGS", pl.col("findings")), _block("IMPRESSION", pl.col("impression"))],
        separator="\n\n",
        ignore_nulls=True,
    )
    return pl.when(both != "").then(both)


def _image_of(col: pl.Expr, group: str) -> pl.Expr:
    return col.list.eval(
        pl.element().filter(pl.element().struct.field("view_group") == group).struct.field("path")
    ).list.first()


def _prior() -> pl.Expr:
    return pl.col("priors").list.first()


def srrg(rec: pl.DataFrame, structured: pl.DataFrame | None = None) -> pl.DataFrame:
    sections = [s for s in SECTIONS if s in rec.columns]
    original = pl.concat_str(
        [_block(s.upper(), pl.col(s)) for s in sections], separator="\n\n", ignore_nulls=True
    )
    df = rec.with_columns(pl.col("study_id").cast(pl.String).alias("id"))
    if structured is not None:
        sr = structured.select(
            "id",
            pl.concat_str(
                [
                    _block("FINDINGS", pl.col("structured_findings")).str.replace(
                        "^FINDINGS: ", "FINDINGS:\n"
                    ),
                    _block("IMPRESSION", pl.col("structured_impression")).str.replace(
                        "^IMPRESSION: ", "IMPRESSION:\n"
                    ),
                ],
                separator="\n\n",
                ignore_nulls=True,
            ).alias("structured_report"),
        ).unique("id", keep="first")
        df = df.join(sr, on="id", how="left", maintain_order="left")
        df = df.with_columns(
            pl.when(pl.col("structured_report") != "")
            .then(pl.col("structured_report"))
            .alias("structured_report")
        )
    else:
        df = df.with_columns(pl.lit(None, pl.String).alias("structured_report"))
    return df.select(
        "id",
        pl.when(original != "").then(original).alias("original_report"),
        "structured_report",
        _text("findings").alias("findings_section"),
        _text("impression").alias("impression_section"),
        pl.coalesce(_text("history"), _text("indication")).alias("history_section"),
        _text("technique").alias("technique_section"),
        _text("comparison").alias("comparison_section"),
        _text("examination").alias("exam_type_section"),
        pl.col("images").list.eval(pl.element().struct.field("path")).alias("image_paths"),
        "study_id",
        "subject_id",
        "split",
    )


def maira2(rec: pl.DataFrame, target: str) -> pl.DataFrame:
    prior = _prior()
    prior_report = pl.concat_str(
        [
            _block("FINDINGS", prior.struct.field("findings")),
            _block("IMPRESSION", prior.struct.field("impression")),
        ],
        separator="\n\n",
        ignore_nulls=True,
    )
    return rec.select(
        "study_id",
        "subject_id",
        "split",
        _image_of(pl.col("images"), "frontal").alias("current_frontal"),
        _image_of(pl.col("images"), "lateral").alias("current_lateral"),
        _image_of(prior.struct.field("images"), "frontal").alias("prior_frontal"),
        _text("indication").alias("indication"),
        _text("technique").alias("technique"),
        _text("comparison").alias("comparison"),
        pl.when(prior_report != "").then(prior_report).alias("prior_report"),
        target_expr(target).alias("target"),
        pl.lit(target).alias("target_section"),
    )


def instructions(rec: pl.DataFrame, target: str) -> pl.DataFrame:
    prior = _prior()
    prior_text = pl.concat_str(
        [
            pl.lit("PRIOR STUDY (")
            + prior.struct.field("days_before").cast(pl.String)
            + pl.lit(" days earlier):"),
            _block("FINDINGS", prior.struct.field("findings")),
            _block("IMPRESSION", prior.struct.field("impression")),
        ],
        separator="\n",
        ignore_nulls=True,
    )
    context = pl.concat_str(
        [
            _block("INDICATION", pl.col("indication")),
            _block("TECHNIQUE", pl.col("technique")),
            _block("COMPARISON", pl.col("comparison")),
            pl.when(prior.is_not_null()).then(prior_text).otherwise(pl.lit("PRIOR STUDY: none")),
        ],
        separator="\n\n",
        ignore_nulls=True,
    )
    what = target.replace("+", " and ")
    return rec.select(
        pl.col("study_id").cast(pl.String).alias("id"),
        "study_id",
        "split",
        pl.lit(f"Write the {what} section of this chest X-ray report.").alias("instruction"),
        context.alias("context"),
        pl.col("images").list.eval(pl.element().struct.field("path")).alias("image_paths"),
        target_expr(target).alias("target"),
        pl.lit(target).alias("target_section"),
    )


def export_table(
    fmt: str, rec: pl.DataFrame, *, target: str = "findings", structured: pl.DataFrame | None = None
) -> pl.DataFrame:
    """The export table `fmt` of the records (with a `split` column for per-split files)."""
    if fmt == "srrg":
        return srrg(rec, structured)
    if fmt == "maira2":
        return maira2(rec, target)
    if fmt == "jsonl":
        return instructions(rec, target)
    raise CxrctxError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")


def write_jsonl_split_files(df: pl.DataFrame, folder: Path, bundle: Path) -> list[ShardInfo]:
    """`folder/<split>-00000-of-00001.jsonl` per hub split, written atomically."""
    df = df.with_columns(T.hub_split().alias("_hub"))
    infos = []
    for split in T.SPLIT_ORDER:
        part = df.filter(pl.col("_hub") == split).drop("_hub")
        if part.height == 0:
            continue
        path = folder / f"{split}-00000-of-00001.jsonl"
        with atomic_path(path) as tmp:
            jsonl.write_frame(part, tmp)
        infos.append(
            ShardInfo(
                path=path.relative_to(bundle).as_posix(), rows=part.height, sha256=sha256_file(path)
            )
        )
    return infos
