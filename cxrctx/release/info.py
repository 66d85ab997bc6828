"""`info`: what a stage folder or release bundle is, and its per-split table.

Works from the manifest plus the IDs-only view of the records (`public_studies`), so the
same code describes a build-priors folder, a credentialed bundle and a public bundle.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from cxrctx.errors import CxrctxError
from cxrctx.io import Stage
from cxrctx.release import tables as T
from cxrctx.release.trust import open_bundle
from cxrctx.vocab import FLAGS, HEADER_ONLY, LESIONS

#: Row order of the per-split table.
COUNT_KEYS = (
    "studies",
    "with_findings",
    "with_impression",
    "with_both",
    "findings_only",
    "impression_only",
    "neither",
    "with_prior",
)


def split_summary(
    studies: pl.DataFrame, labels_long: pl.DataFrame | None = None
) -> dict[str, dict[str, int]]:
    """Per hub split (and `all`): studies, section presence, ≥ 1 prior, flags, positives.

    `studies` is the public studies table (has_findings, has_impression, n_prior_studies,
    flags, split). Label positives are counted per lesion (`positive:<lesion>`); studies
    with no label row as `unlabeled_studies`, and, where the labels carry `section`, the
    labeled studies with text only in header sections as `header_only_studies`."""
    df = studies.with_columns(T.hub_split().alias("_hub"))
    f, i = pl.col("has_findings"), pl.col("has_impression")
    exprs = [
        pl.len().alias("studies"),
        f.sum().alias("with_findings"),
        i.sum().alias("with_impression"),
        (f & i).sum().alias("with_both"),
        (f & ~i).sum().alias("findings_only"),
        (~f & i).sum().alias("impression_only"),
        (~f & ~i).sum().alias("neither"),
        (pl.col("n_prior_studies") > 0).sum().alias("with_prior"),
        *[pl.col("flags").list.contains(x).sum().alias(f"flag:{x}") for x in FLAGS],
    ]
    out: dict[str, dict[str, int]] = {}
    groups = [(s, df.filter(pl.col("_hub") == s)) for s in T.SPLIT_ORDER] + [("all", df)]
    for split, part in groups:
        if part.height == 0 and split != "all":
            continue
        row = part.select(exprs).row(0, named=True)
        out[split] = {k: int(v or 0) for k, v in row.items()}
    if labels_long is not None:
        _add_positives(out, labels_long)
    return out


def temporal_summary(studies: pl.DataFrame) -> dict[str, dict[str, Any]]:
    """Per hub split (and `all`): the temporal-hallucination rate of the source reports,
    the share of studies with no prior study whose findings/impression use comparison
    language ("compared to prior", "unchanged", "new since", ...).

    Read from the record flag `temporal_reference_without_prior`, which build-priors sets
    from `has_temporal_reference(findings, impression)` for exactly the records with
    `n_prior_studies == 0`, so bundles without report text give the same figure."""
    df = studies.with_columns(T.hub_split().alias("_hub"))
    no_prior = pl.col("n_prior_studies") == 0
    exprs = [
        no_prior.sum().alias("without_prior"),
        (no_prior & pl.col("flags").list.contains("temporal_reference_without_prior"))
        .sum()
        .alias("with_comparison"),
    ]
    out: dict[str, dict[str, Any]] = {}
    groups = [(s, df.filter(pl.col("_hub") == s)) for s in T.SPLIT_ORDER] + [("all", df)]
    for split, part in groups:
        if part.height == 0 and split != "all":
            continue
        row = part.select(exprs).row(0, named=True)
        n, hit = int(row["without_prior"] or 0), int(row["with_comparison"] or 0)
        out[split] = {"without_prior": n, "with_comparison": hit, "rate": hit / n if n else None}
    return out


def _add_positives(out: dict[str, dict[str, int]], long: pl.DataFrame) -> None:
    pos = long.filter(pl.col("status") == "positive").with_columns(T.hub_split().alias("_hub"))
    for split, row in out.items():
        part = pos if split == "all" else pos.filter(pl.col("_hub") == split)
        counts = dict(part.group_by("lesion").len().iter_rows())
        labeled = long if split == "all" else long.filter(T.hub_split() == split)
        row["labeled_studies"] = labeled.select(pl.col("study_id").n_unique()).item()
        # studies with no label row (no text in any labeled section, or failed): never hidden
        row["unlabeled_studies"] = row["studies"] - row["labeled_studies"]
        if "section" in long.columns:  # labeled, every lesion not_mentioned: no report body
            head = labeled.filter(pl.col("section") == HEADER_ONLY)
            row["header_only_studies"] = head.select(pl.col("study_id").n_unique()).item()
        for lesion in LESIONS:
            row[f"positive:{lesion}"] = int(counts.get(lesion, 0))


@dataclass
class Info:
    """What `cxrctx info` shows (also its `--json`)."""

    path: str
    stage: str
    schema_version: int
    tool_version: str
    config: dict[str, Any]
    inputs: list[dict[str, Any]]
    counts: dict[str, int]
    splits: dict[str, dict[str, int]] = field(default_factory=dict)
    tables: dict[str, int] = field(default_factory=dict)
    #: per split: without_prior, with_comparison, rate (None without such studies)
    temporal_hallucination: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: a release folder: its other bundles (credentialed) by name, described the same way
    bundles: dict[str, Info] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _studies_of(st: Stage) -> pl.DataFrame | None:
    """The public-studies view of a stage folder or bundle, when it has one."""
    if st.name == "build-priors":
        return T.public_studies(st.read())
    if st.name.startswith("release-"):
        table = "studies" if st.name == "release-public" else "records"
        files = [st.dir / s.path for s in st.manifest.shards if s.path.startswith(f"data/{table}/")]
        if files:
            df = pl.concat([pl.read_parquet(f) for f in files], how="vertical_relaxed")
            return df if table == "studies" else T.public_studies(df)
    return None


def _labels_of(st: Stage) -> pl.DataFrame | None:
    if st.name.startswith("release-"):
        files = [
            st.dir / s.path for s in st.manifest.shards if s.path.startswith("data/labels_long/")
        ]
        if files:
            return pl.concat([pl.read_parquet(f) for f in files], how="vertical_relaxed")
    return None


def info(path: str | os.PathLike, *, verify: str = "rows") -> Info:
    """Describe a stage output folder or a release bundle (checked with `open_stage`).

    A release folder holding public/ and credentialed/ is described by its public bundle,
    with the credentialed one in `bundles`. Manifest paths that leave a folder are refused."""
    p = Path(path)
    if p.is_dir() and not (p / "manifest.json").exists() and (p / "public").is_dir():
        res = info(p / "public", verify=verify)
        if (p / "credentialed").is_dir():
            res.bundles["credentialed"] = info(p / "credentialed", verify=verify)
        return res
    st = open_bundle(p, None, verify=verify)
    m = st.manifest
    res = Info(
        path=str(st.dir),
        stage=m.stage,
        schema_version=m.schema_version,
        tool_version=m.tool_version,
        config=m.config,
        inputs=[i.model_dump() for i in m.inputs],
        counts=m.counts,
    )
    tables: dict[str, int] = {}
    for s in [*m.shards, *m.tables]:
        parts = Path(s.path).parts
        key = parts[1] if parts[0] == "data" and len(parts) > 2 else parts[0]
        tables[key] = tables.get(key, 0) + s.rows
    res.tables = tables
    studies = _studies_of(st)
    if studies is not None:
        res.splits = split_summary(studies, _labels_of(st))
        res.temporal_hallucination = temporal_summary(studies)
    elif m.stage == "label-lesions":
        res.notes.append("per-split counts need the records: run info on the release")
    if not res.splits and studies is None and m.stage not in ("label-lesions",):
        res.notes.append(f"no per-split table for a {m.stage} output")
    return res


def require_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise CxrctxError(f"{p}: no such file or directory")
    return p
