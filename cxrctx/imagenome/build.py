"""`build-rois`: the 11 CLALA-Net regions of interest from Chest ImaGenome scene graphs.

A scene graph (`silver_dataset/scene_graph/<dicom_id>_SceneGraph.json`) has
`objects[]` (bbox_name + `original_x1..y2` in pixels of the original image) and
`attributes[]` (bbox_name, `phrases` = report sentences about that region, and
`attributes` = per-phrase lists of `category|yes/no|name`, e.g. `nlp|yes|abnormal`).

For every image of the given records we keep the 11 ROIs CLALA-Net reports on (the paper,
"ROI"), clean their boxes (a zero-area box or one wholly outside the image is dropped; the
rest is clipped to the image), collect each ROI's sentences (de-duplicated, in order) and
its abnormal flag (any phrase tagged `nlp|yes|abnormal`). The model needs all 11 ROIs per
image, so an image whose scene graph lacks one (or whose box had to be dropped) goes to the
`rejects` table with the reason, never silently. Counts reconcile:
`images_considered = images_written + images_rejected`, and non-frontal images without a
scene graph are counted apart (Chest ImaGenome only covers frontal views).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from cxrctx.errors import CxrctxError
from cxrctx.io import (
    PolarsType,
    Stage,
    config_hash,
    input_file,
    open_stage,
    shard_paths,
    write_parquet,
    write_shards,
    write_stage_manifest,
)
from cxrctx.output_policy import prepare_output
from cxrctx.vocab import ROIS

log = logging.getLogger(__name__)

ROI_SCHEMA_VERSION = 1


class RoiBox(BaseModel):
    """One cleaned ROI of one image."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="One of the 11 CLALA-Net ROI names")
    x1: float
    y1: float
    x2: float
    y2: float
    clipped: bool = Field(description="True when the box reached outside the image and was clipped")
    sentences: list[str] = Field(
        description="Report sentences about this region (scene-graph phrases), de-duplicated"
    )
    abnormal: bool = Field(description="Any phrase of this region tagged nlp|yes|abnormal")


class RoiRow(BaseModel):
    """One image with its 11 ROIs (rows of `OUT/rois/part-*.parquet`), keyed by dicom_id."""

    model_config = ConfigDict(extra="forbid")

    dicom_id: str
    subject_id: int
    study_id: int
    split: str | None
    path: str = Field(description="Image path relative to the MIMIC root, from the record")
    view_position: str | None
    rows: int | None = Field(description="Original image height the box coordinates refer to")
    columns: int | None = Field(description="Original image width the box coordinates refer to")
    rois: list[RoiBox] = Field(description="Exactly the 11 ROIs, in cxrctx.vocab.ROIS order")


class RoiReject(BaseModel):
    """An image that did not become a ROI row, and why."""

    model_config = ConfigDict(extra="forbid")

    dicom_id: str
    study_id: int | None
    source: str
    reason: str


@dataclass
class RoiResult:
    out_dir: Path
    rows: int
    rejects: int
    counts: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)


def scene_graph_dir(imagenome_dir: str | os.PathLike) -> Path:
    """Accept the Chest ImaGenome root, its silver_dataset, or the scene_graph folder itself."""
    p = Path(imagenome_dir)
    for cand in (p / "silver_dataset" / "scene_graph", p / "scene_graph", p):
        if cand.is_dir() and (cand.name == "scene_graph" or any(cand.glob("*_SceneGraph.json"))):
            return cand
    if not p.exists():
        raise CxrctxError(f"{p}: no such directory")
    raise CxrctxError(f"{p}: no silver_dataset/scene_graph/*_SceneGraph.json found")


def _num(v: object) -> float | None:
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if f == f else None  # NaN → None


def clean_box(
    x1: float, y1: float, x2: float, y2: float, width: float | None, height: float | None
) -> tuple[tuple[float, float, float, float] | None, bool, str]:
    """Return (clipped box or None, clipped?, reason when dropped). Coordinates in original pixels."""
    if x2 < x1:
        x1, x2 = x2, x1
    if y2 < y1:
        y1, y2 = y2, y1
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        return None, False, "zero-area box"
    W = width if width and width > 0 else float("inf")
    H = height if height and height > 0 else float("inf")
    if x2 <= 0 or y2 <= 0 or x1 >= W or y1 >= H:
        return None, False, "box outside the image"
    cx1, cy1, cx2, cy2 = max(0.0, x1), max(0.0, y1), min(W, x2), min(H, y2)
    clipped = (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2)
    if cx2 - cx1 < 1 or cy2 - cy1 < 1:
        return None, clipped, "box under one pixel after clipping"
    return (cx1, cy1, cx2, cy2), clipped, ""


def _dedupe(items: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for s in items:
        s = " ".join(str(s).split())
        key = s.lower()
        if s and key not in seen:
            seen.add(key)
            out.append(s)
    return out


def parse_scene_graph(
    data: dict, *, width: float | None, height: float | None
) -> tuple[list[dict] | None, str, int]:
    """Extract the 11 cleaned ROIs from one scene graph.

    Returns (rois or None, reason when None, number of dropped boxes among the 11).
    """
    if not isinstance(data, dict) or not isinstance(data.get("objects"), list):
        return None, "scene graph has no objects[] list", 0
    boxes: dict[str, tuple[tuple[float, float, float, float] | None, bool, str]] = {}
    for obj in data["objects"]:
        if not isinstance(obj, dict):
            continue
        name = str(obj.get("bbox_name", "")).strip().lower()
        if name not in ROIS or name in boxes:
            continue
        coords = [_num(obj.get(f"original_{k}")) for k in ("x1", "y1", "x2", "y2")]
        if any(c is None for c in coords):
            boxes[name] = (None, False, "box without original_x1..y2")
            continue
        x1, y1, x2, y2 = (float(c) for c in coords if c is not None)
        boxes[name] = clean_box(x1, y1, x2, y2, width, height)
    phrases: dict[str, list[str]] = {r: [] for r in ROIS}
    abnormal: dict[str, bool] = dict.fromkeys(ROIS, False)
    for att in data.get("attributes") or []:
        if not isinstance(att, dict):
            continue
        name = str(att.get("bbox_name", "")).strip().lower()
        if name not in phrases:
            continue
        ph = att.get("phrases") or []
        phrases[name].extend(p for p in ph if isinstance(p, str))
        for group in att.get("attributes") or []:
            tags = group if isinstance(group, list) else [group]
            if any(str(t).strip().lower() == "nlp|yes|abnormal" for t in tags):
                abnormal[name] = True
    missing = [r for r in ROIS if r not in boxes]
    dropped = [(r, boxes[r][2]) for r in ROIS if r in boxes and boxes[r][0] is None]
    if missing or dropped:
        parts = []
        if missing:
            parts.append("missing ROI " + ", ".join(f"'{r}'" for r in missing))
        parts.extend(f"ROI '{r}' dropped: {why}" for r, why in dropped)
        return None, "; ".join(parts), len(dropped)
    rois = []
    for r in ROIS:
        box, clipped, _ = boxes[r]
        assert box is not None
        rois.append(
            {
                "name": r,
                "x1": box[0],
                "y1": box[1],
                "x2": box[2],
                "y2": box[3],
                "clipped": clipped,
                "sentences": _dedupe(phrases[r]),
                "abnormal": abnormal[r],
            }
        )
    return rois, "", 0


_ROI_STRUCT = pl.Struct(
    {
        "name": pl.String,
        "x1": pl.Float64,
        "y1": pl.Float64,
        "x2": pl.Float64,
        "y2": pl.Float64,
        "clipped": pl.Boolean,
        "sentences": pl.List(pl.String),
        "abnormal": pl.Boolean,
    }
)
ROI_FRAME_SCHEMA: dict[str, PolarsType] = {
    "dicom_id": pl.String,
    "subject_id": pl.Int64,
    "study_id": pl.Int64,
    "split": pl.String,
    "path": pl.String,
    "view_position": pl.String,
    "rows": pl.Int64,
    "columns": pl.Int64,
    "rois": pl.List(_ROI_STRUCT),
}
ROI_REJECT_SCHEMA = {
    "dicom_id": pl.String,
    "study_id": pl.Int64,
    "source": pl.String,
    "reason": pl.String,
}


def _reason_key(reason: str) -> str:
    if reason.startswith("missing ROI"):
        return "missing ROI"
    if "dropped" in reason:
        return "ROI box dropped"
    return reason.split(":")[0]


def _open_records(records: str | os.PathLike) -> Stage:
    """The checked build-priors output; a folder without shards says so plainly."""
    p = Path(records)
    empty = not shard_paths(p / "records") and not shard_paths(p)
    if p.is_dir() and empty and not (p / "manifest.json").exists():
        raise CxrctxError(
            f"{records}: no records shards (part-*.parquet) found; expected a build-priors output"
        )
    return open_stage(p, "build-priors")


def _collect(
    recs: pl.DataFrame, sg_dir: Path, frontal_only: bool
) -> tuple[list[dict], list[dict], dict[str, int]]:
    """One ROI row or one reject per image of the records (each dicom_id once)."""
    rows: list[dict] = []
    rejects: list[dict] = []
    counts = {
        "images_in_records": 0,
        "images_considered": 0,
        "skipped_non_frontal": 0,
        "boxes_clipped": 0,
    }
    seen: set[str] = set()
    for rec in recs.iter_rows(named=True):
        for img in rec["images"] or []:
            counts["images_in_records"] += 1
            if img["dicom_id"] in seen:
                continue
            seen.add(img["dicom_id"])
            sg = sg_dir / f"{img['dicom_id']}_SceneGraph.json"
            if not sg.exists() and frontal_only and img.get("view_group") != "frontal":
                counts["skipped_non_frontal"] += 1
                continue
            counts["images_considered"] += 1
            row, why = _image_row(rec, img, sg)
            if row is None:
                rejects.append(
                    {
                        "dicom_id": img["dicom_id"],
                        "study_id": rec["study_id"],
                        "source": sg.name,
                        "reason": why,
                    }
                )
            else:
                counts["boxes_clipped"] += sum(r["clipped"] for r in row["rois"])
                rows.append(row)
    return rows, rejects, counts


def _image_row(rec: dict, img: dict, sg: Path) -> tuple[dict | None, str]:
    """The ROI row of one image, or (None, reject reason)."""
    if not sg.exists():
        return None, "no scene graph"
    try:
        data = json.loads(sg.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"unreadable scene graph: {type(e).__name__}"
    rois, why, _ = parse_scene_graph(data, width=img.get("columns"), height=img.get("rows"))
    if rois is None:
        return None, why
    row = {
        "dicom_id": img["dicom_id"],
        "subject_id": rec["subject_id"],
        "study_id": rec["study_id"],
        "split": rec["split"],
        "path": img["path"],
        "view_position": img.get("view_position"),
        "rows": img.get("rows"),
        "columns": img.get("columns"),
        "rois": rois,
    }
    return row, ""


def build_rois(
    imagenome_dir: str | os.PathLike,
    *,
    records: str | os.PathLike,
    out: str | os.PathLike,
    rows_per_shard: int = 50_000,
    frontal_only: bool = True,
    overwrite: bool = False,
) -> RoiResult:
    """Read scene graphs for every image of `records` and write `OUT/rois/part-*.parquet`.

    `records` is a build-priors output folder (or its `records/` folder), checked against
    its manifest before use. Writes `OUT/rejects.parquet` and `OUT/manifest.json`.
    Deterministic: rows sorted by dicom_id, same inputs ⇒ same bytes. OUT follows the
    shared output policy: a non-empty OUT of another run is refused unless `overwrite`.
    """
    sg_dir = scene_graph_dir(imagenome_dir)
    rst = _open_records(records)
    try:
        recs = rst.read().select("subject_id", "study_id", "split", "images")
    except Exception as e:
        raise CxrctxError(f"{records}: cannot read records shards ({e})") from e
    config = {"rois": list(ROIS), "frontal_only": frontal_only, "rows_per_shard": rows_per_shard}
    run_key = config_hash({**config, "records": [s.sha256 for s in rst.manifest.shards]})
    prepare_output(out, stage="build-rois", config_hash=run_key, overwrite=overwrite)
    out_dir = Path(out)
    rows, rejects, counts = _collect(recs, sg_dir, frontal_only)
    df = pl.DataFrame(rows, schema=ROI_FRAME_SCHEMA).sort("dicom_id")
    rej = pl.DataFrame(rejects, schema=ROI_REJECT_SCHEMA).sort("dicom_id")
    shards = write_shards(df, out_dir / "rois", rows_per_shard, relative_to=out_dir)
    rej_info = write_parquet(rej, out_dir / "rejects.parquet")
    reasons: dict[str, int] = {}
    for r in rej["reason"].to_list():
        k = _reason_key(r)
        reasons[k] = reasons.get(k, 0) + 1
    counts.update({"images_written": df.height, "images_rejected": rej.height})
    assert counts["images_considered"] == counts["images_written"] + counts["images_rejected"]
    write_stage_manifest(
        out_dir,
        stage="build-rois",
        schema_version=ROI_SCHEMA_VERSION,
        config=config,
        inputs=[input_file(p, os.path.relpath(p, rst.dir)) for p in rst.shard_files()],
        shards=shards,
        tables=[rej_info.model_copy(update={"path": "rejects.parquet"})],
        counts=counts,
        extra={"reject_reasons": dict(sorted(reasons.items()))},
    )
    log.info("build-rois: %d images written, %d rejected", df.height, rej.height)
    return RoiResult(
        out_dir=out_dir, rows=df.height, rejects=rej.height, counts=counts, reasons=reasons
    )


def read_rois(path: str | os.PathLike) -> pl.DataFrame:
    """Read a build-rois output (its folder or `rois/`), checked against its manifest."""
    p = Path(path)
    if (
        p.is_dir()
        and not (p / "manifest.json").exists()
        and not shard_paths(p / "rois")
        and not shard_paths(p)
    ):
        raise CxrctxError(f"{path}: no ROI shards (rois/part-*.parquet) found")
    return open_stage(p, "build-rois").read()
