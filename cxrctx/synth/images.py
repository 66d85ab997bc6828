"""Synthetic chest-like radiographs and Chest ImaGenome scene graphs for a synthetic root.

Called by `cxrctx.synth.synthesize(..., images=..., imagenome=...)` with the metadata rows
and each study's truth (positive lesions, report sections) it has just written. Every image is rendered from a jittered anatomical
template (lungs dark, mediastinum and heart bright, ribs, diaphragm, noise) and the
study's ground-truth positive lesions are drawn where the truth says they are, so a model
trained on the pixels can learn what the reports say:

- cardiomegaly widens the cardiac silhouette; hernia puts a gas bubble behind the heart;
- pleural effusion whitens the lung base and blunts the costophrenic angle on its side;
  pleural thickening draws a bright rim along the lateral pleura;
- pneumothorax blacks out the apex/lateral edge of the lung (no lung markings);
- consolidation is one dense, homogeneous lobar opacity across the middle zone of its side
  between sharp horizontal (fissure-like) edges, crossed by dark air bronchograms, the
  costophrenic angle left clear (unlike an effusion); pneumonia is several separate soft,
  fluffy patches scattered over the middle and lower zones (multifocal airspace disease);
  atelectasis / infiltration / fibrosis put band-like, hazy or reticular opacities there;
- a nodule is one small (≈ 6 % of the lung width), sharply edged, very bright round spot;
  a mass a large (≈ 3× the diameter), lobulated opacity near the hilum of its side;
- edema is a bilateral perihilar haze; emphysema darkens and enlarges both lungs.

Scene graphs carry the boxes of the rendered anatomy (the 11 CLALA-Net ROIs plus a few
extra regions real graphs have) in the *original* pixel space of the metadata's
Rows × Columns, and per-ROI phrases taken from the study's report sentences. A few images
get deliberately bad graphs (a zero-area box, a box wholly outside the image, a box that
must be clipped, a missing ROI) so `build-rois`'s cleaner is exercised.

The renderer is deterministic per (seed, dicom_id).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrctx.synth.dicom import write_dicom
from cxrctx.vocab import ROIS, image_relpath, lesion_rois, split_sentences

#: Scene-graph regions besides the 11 ROIs (real graphs have ~36; these make the cleaner skip extras).
EXTRA_REGIONS = ("trachea", "right apical zone", "left apical zone", "svc")

#: Lesion words for assigning report sentences to regions (lower case substrings).
LESION_WORDS: dict[str, tuple[str, ...]] = {
    "cardiomegaly": (
        "cardiomegaly",
        "heart size",
        "enlarged heart",
        "cardiac silhouette",
        "heart is",
    ),
    "emphysema": ("emphysema", "hyperinflat", "copd"),
    "pleural effusion": ("effusion",),
    "hernia": ("hernia",),
    "nodule": ("nodule", "nodular"),
    "pneumothorax": ("pneumothorax", "pneumothoraces"),
    "atelectasis": ("atelecta",),
    "pleural thickening": ("pleural thickening", "thickening"),
    "mass": ("mass",),
    "edema": ("edema", "congestion", "vascular"),
    "consolidation": ("consolidat",),
    "infiltration": ("infiltrat",),
    "fibrosis": ("fibros", "fibrotic", "scarring"),
    "pneumonia": ("pneumonia", "infection"),
}
_NEG_RE = re.compile(r"\b(no|not|without|negative|normal|clear|unremarkable|resolved|free)\b", re.I)


def _rng(seed: int, key: str) -> np.random.Generator:
    h = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "little"))


# ----------------------------------------------------------------------------- anatomy


def anatomy(
    rng: np.random.Generator, positives: dict[str, str]
) -> dict[str, tuple[float, float, float, float]]:
    """Normalised boxes (x1, y1, x2, y2 in [0, 1]) of the regions, jittered per image.

    Image right = patient left (PA display). Cardiomegaly and emphysema change the anatomy.
    """
    dx, dy = rng.uniform(-0.025, 0.025, size=2)
    s = rng.uniform(0.95, 1.05)
    emph = 0.03 if "emphysema" in positives else 0.0

    def t(x1: float, y1: float, x2: float, y2: float) -> tuple[float, float, float, float]:
        cx, cy = 0.5 + dx, 0.48 + dy
        return (
            cx + (x1 - 0.5) * s,
            cy + (y1 - 0.48) * s,
            cx + (x2 - 0.5) * s,
            cy + (y2 - 0.48) * s,
        )

    top, base = 0.12 - emph, 0.80 + emph
    b = {
        "right lung": t(0.11 - emph, top, 0.47, base),
        "left lung": t(0.53, top, 0.89 + emph, base),
        "right lower lung zone": t(0.11 - emph, 0.58, 0.47, base),
        "left lower lung zone": t(0.53, 0.58, 0.89 + emph, base),
        "right hilar structures": t(0.35, 0.36, 0.47, 0.54),
        "left hilar structures": t(0.53, 0.36, 0.65, 0.54),
        "mediastinum": t(0.42, 0.10, 0.58, 0.76),
        "upper mediastinum": t(0.42, 0.10, 0.58, 0.36),
        "right costophrenic angle": t(0.11 - emph, 0.69 + emph, 0.23 - emph, 0.83 + emph),
        "left costophrenic angle": t(0.77 + emph, 0.69 + emph, 0.89 + emph, 0.83 + emph),
        "trachea": t(0.47, 0.04, 0.53, 0.30),
        "right apical zone": t(0.13, top, 0.45, 0.26),
        "left apical zone": t(0.55, top, 0.87, 0.26),
        "svc": t(0.44, 0.18, 0.49, 0.40),
    }
    if "cardiomegaly" in positives:
        b["cardiac silhouette"] = t(0.31, 0.44, 0.77, 0.78)
    else:
        b["cardiac silhouette"] = t(0.41, 0.48, 0.66, 0.76)
    return {k: tuple(float(np.clip(v, 0.0, 1.0)) for v in box) for k, box in b.items()}  # type: ignore[misc]


def _ellipse(xx: np.ndarray, yy: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    x1, y1, x2, y2 = box
    cx, cy, rx, ry = (
        (x1 + x2) / 2,
        (y1 + y2) / 2,
        max((x2 - x1) / 2, 1e-3),
        max((y2 - y1) / 2, 1e-3),
    )
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2


def lung_shape(
    xx: np.ndarray, yy: np.ndarray, box: tuple[float, float, float, float], side: str
) -> np.ndarray:
    """Lung field: rounded apex, straight lateral wall, diaphragm dome; sharp costophrenic angle laterally."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    inner = x2 if side == "right" else x1  # right lung sits on the image left
    u = np.clip(np.abs(xx - inner) / w, 0, None)  # 0 medial … 1 lateral
    apex_y = y1 + 0.3 * h
    apex = ((u - 0.0) / 1.0) ** 2 + np.clip((apex_y - yy) / (0.3 * h), 0, None) ** 2 <= 1.0
    dome = y2 - 0.12 * h * np.sin(np.pi * np.clip(1 - u, 0, 1) * 0.8)
    return (
        (u <= 1.0)
        & (yy >= y1)
        & (yy <= dome)
        & apex
        & (np.abs(xx - inner) <= w)
        & ((xx <= inner) if side == "right" else (xx >= inner))
    )


def _blob(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    return np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)))


def _sides(location: str) -> tuple[str, ...]:
    return {"left": ("left",), "right": ("right",)}.get(location, ("left", "right"))


Box = tuple[float, float, float, float]


def _paint_anatomy(
    rng: np.random.Generator,
    xx: np.ndarray,
    yy: np.ndarray,
    boxes: dict[str, Box],
    positives: dict[str, str],
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Soft tissue, dark lungs with ribs and markings, mediastinum, heart, diaphragm, trachea."""
    height, width = xx.shape
    img = np.full((height, width), 0.55, np.float32)  # soft tissue
    img -= 0.25 * np.clip(np.abs(xx - 0.5) - 0.42, 0, None) / 0.08  # air outside the body
    lung_masks = {}
    for side in ("left", "right"):
        m = lung_shape(xx, yy, boxes[f"{side} lung"], side)
        lung_masks[side] = m
        dark = 0.30 if "emphysema" in positives else 0.22
        img[m] = dark
    # ribs: curved bright bands inside the lungs
    ribs = 0.06 * (
        np.sin((yy + 0.08 * np.abs(xx - 0.5)) * 2 * np.pi * 9 + rng.uniform(0, 6.3)) > 0.55
    )
    img += ribs * (lung_masks["left"] | lung_masks["right"])
    # lung markings: faint vessels fanning out from the hila
    for side, hx in (("right", 0.41), ("left", 0.59)):
        ang = np.arctan2(yy - 0.45, xx - hx)
        marks = (
            0.04
            * (np.cos(ang * 14 + rng.uniform(0, 6.3)) > 0.8)
            * np.exp(-np.hypot(xx - hx, yy - 0.45) / 0.18)
        )
        img += marks * lung_masks[side]
    mx1, my1, mx2, my2 = boxes["mediastinum"]
    img[(xx >= mx1 + 0.02) & (xx <= mx2 - 0.02) & (yy >= my1) & (yy <= my2)] = 0.78
    heart = _ellipse(xx, yy, boxes["cardiac silhouette"]) <= 1.0
    img[heart] = 0.82
    for side in ("left", "right"):
        lb = boxes[f"{side} lung"]
        below = (yy > lb[3] - 0.02) & (xx > lb[0]) & (xx < lb[2])
        img[below] = np.maximum(img[below], 0.75)
    img[(yy > 0.02) & (yy < boxes["trachea"][3]) & (np.abs(xx - 0.5) < 0.018)] = (
        0.3  # trachea air column
    )
    return img, lung_masks


def _paint_on_side(
    img: np.ndarray,
    rng: np.random.Generator,
    xx: np.ndarray,
    yy: np.ndarray,
    lesion: str,
    side: str,
    lb: Box,
    lung: np.ndarray,
) -> None:
    """Draw one lateralised lesion into the lung `lung` (box `lb`) of `side`."""
    height, width = xx.shape
    lcx, lw, lh = (lb[0] + lb[2]) / 2, lb[2] - lb[0], lb[3] - lb[1]
    outer = lb[0] if side == "right" else lb[2]

    def zone(y_from: float, y_to: float) -> np.ndarray:
        return lung & (yy >= lb[1] + y_from * lh) & (yy <= lb[1] + y_to * lh)

    if lesion == "pleural effusion":
        level = lb[1] + lh * rng.uniform(0.62, 0.72)
        meniscus = level - 0.06 * np.abs(xx - outer) / lw * -1  # rises laterally
        z = (yy >= meniscus) & (np.abs(xx - lcx) <= lw / 2 + 0.03) & (yy <= lb[3] + 0.05)
        img[z] = np.maximum(img[z], 0.74)
    elif lesion == "pneumothorax":
        edge = (np.abs(xx - outer) < lw * 0.35) & (yy < lb[1] + lh * 0.6)
        img[lung & edge] = 0.04
    elif lesion == "consolidation":  # a filled (middle) lobe: homogeneous, air bronchograms
        top = rng.uniform(0.38, 0.45)
        z = zone(top, top + 0.32)
        img[z] = np.maximum(img[z], 0.68 + rng.uniform(-0.03, 0.03))
        ang = np.arctan2(yy - lb[1] - top * lh, xx - lcx)
        img[z & (np.abs(np.sin(ang * 7 + rng.uniform(0, 6.3))) < 0.08)] -= 0.25
    elif lesion == "pneumonia":  # multifocal: separate soft patches, middle and lower zone
        for _ in range(int(rng.integers(3, 6))):
            cx = lcx + rng.uniform(-0.35, 0.35) * lw
            cy = lb[1] + lh * rng.uniform(0.35, 0.9)
            img += 0.42 * _blob(xx, yy, cx, cy, 0.03) * lung
    elif lesion == "atelectasis":
        cy = lb[1] + lh * rng.uniform(0.70, 0.82)
        band = (np.abs(yy - cy - 0.15 * (xx - lcx)) < 0.018) & lung
        img[band] = np.maximum(img[band], 0.72)
    elif lesion == "infiltration":
        img += 0.22 * zone(0.35, 0.95) * (rng.random((height, width)) > 0.45)
    elif lesion == "fibrosis":
        net = (np.sin(xx * 160) > 0.85) | (np.sin(yy * 160 + xx * 40) > 0.85)
        img[zone(0.45, 1.0) & net] += 0.3
    elif lesion == "pleural thickening":
        rim = lung & (np.abs(xx - outer) < 0.03)
        img[rim] = np.maximum(img[rim], 0.7)
    elif lesion == "nodule":  # small, round, sharp, very bright
        cx = lcx + rng.uniform(-0.06, 0.06)
        cy = lb[1] + lh * rng.uniform(0.2, 0.5)
        img += 0.6 * (_blob(xx, yy, cx, cy, 0.022) > 0.5) * lung
    elif lesion == "mass":  # large, lobulated, by the hilum
        hx = lb[2] - 0.3 * lw if side == "right" else lb[0] + 0.3 * lw
        cy = lb[1] + lh * rng.uniform(0.3, 0.5)
        lobes = sum(
            _blob(xx, yy, hx + rng.uniform(-0.03, 0.03), cy + rng.uniform(-0.03, 0.03), 0.05)
            for _ in range(3)
        )
        img += 0.45 * (lobes > 0.6) * lung


def render(
    rng: np.random.Generator, height: int, width: int, positives: dict[str, str]
) -> tuple[np.ndarray, dict[str, Box]]:
    """Render one image (float32 in [0, 1], H × W) and return it with its normalised boxes."""
    boxes = anatomy(rng, positives)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy = (yy + 0.5) / height
    xx = (xx + 0.5) / width
    img, lung_masks = _paint_anatomy(rng, xx, yy, boxes, positives)
    for lesion, location in positives.items():
        for side in _sides(location):
            _paint_on_side(img, rng, xx, yy, lesion, side, boxes[f"{side} lung"], lung_masks[side])
        if lesion == "edema":
            for hx in (0.40, 0.60):
                haze = _blob(xx, yy, hx, 0.47, 0.12)
                img += 0.28 * haze * (lung_masks["left"] | lung_masks["right"])
        elif lesion == "hernia":
            hb = boxes["cardiac silhouette"]
            img -= 0.5 * (_blob(xx, yy, 0.5, hb[1] + 0.6 * (hb[3] - hb[1]), 0.035) > 0.5)
    img += rng.normal(0, 0.025, size=img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32), boxes


# ----------------------------------------------------------------------------- phrases


def sentence_list(text: str | None) -> list[str]:
    if not text:
        return []
    flat = " ".join(text.split())
    return [flat[a:b] for a, b in split_sentences(flat) if b - a > 2]


def sentence_rois(sentence: str) -> list[str]:
    """Assign a report sentence to ROIs by its lesion / anatomy words and sides."""
    s = sentence.lower()
    side = (
        "bilateral"
        if re.search(r"\b(bilateral|both|bibasilar|bibasal)\b", s)
        else "left"
        if re.search(r"\bleft\b", s) and not re.search(r"\bright\b", s)
        else "right"
        if re.search(r"\bright\b", s) and not re.search(r"\bleft\b", s)
        else "not mentioned"
    )
    out: set[str] = set()
    for lesion, words in LESION_WORDS.items():
        if any(w in s for w in words):
            out.update(lesion_rois(lesion, side))
    if re.search(r"\b(heart|cardiac)\b", s):
        out.add("cardiac silhouette")
    if "mediastin" in s:
        out.update(("mediastinum", "upper mediastinum"))
    if "hil" in s and re.search(r"\bhil(a|um|ar)\b", s):
        out.update(
            r
            for r in ROIS
            if "hilar" in r and (side in ("bilateral", "not mentioned") or r.startswith(side))
        )
    if re.search(r"\blungs?\b", s) and not out:
        out.update(
            r
            for r in ("left lung", "right lung")
            if side in ("bilateral", "not mentioned") or r.startswith(side)
        )
    if "costophrenic" in s:
        out.update(
            r
            for r in ROIS
            if "costophrenic" in r
            and (side in ("bilateral", "not mentioned") or r.startswith(side))
        )
    return [r for r in ROIS if r in out]


def _phrase_attributes(sentence: str, positives: dict[str, str]) -> list[str]:
    s = sentence.lower()
    tags = []
    abnormal = False
    for lesion, words in LESION_WORDS.items():
        if any(w in s for w in words):
            yes = lesion in positives and not _NEG_RE.search(s)
            abnormal |= yes
            tags.append(f"disease|{'yes' if yes else 'no'}|{lesion}")
    tags.append("nlp|yes|abnormal" if abnormal else "nlp|yes|normal")
    return tags


def scene_graph(
    dicom_id: str,
    study_id: int,
    boxes: dict[str, tuple[float, float, float, float]],
    rows: int,
    columns: int,
    sentences: list[str],
    positives: dict[str, str],
    defect: str | None,
    render_size: int = 0,
) -> dict:
    """A Chest ImaGenome-shaped scene graph; `defect` injects one cleaner test case."""
    objects = []
    names = [*ROIS, *EXTRA_REGIONS]
    for name in names:
        x1, y1, x2, y2 = boxes[name]
        # integers like the real dataset; 2 decimals when the "original" is smaller than the render
        nd = None if max(rows, columns) >= render_size else 2
        ox1, oy1 = round(x1 * columns, nd), round(y1 * rows, nd)
        ox2, oy2 = round(x2 * columns, nd), round(y2 * rows, nd)
        if defect == "missing" and name == "left costophrenic angle":
            continue
        if defect == "zero_area" and name == "right hilar structures":
            ox2 = ox1
        if defect == "outside" and name == "upper mediastinum":
            oy1, oy2 = -rows - 50, -(rows // 2)
        if defect == "clip" and name == "right lung":
            ox1 = -40
        objects.append(
            {
                "object_id": f"{dicom_id}_{name}",
                "x1": round(x1 * 224),
                "y1": round(y1 * 224),
                "x2": round(x2 * 224),
                "y2": round(y2 * 224),
                "width": round((x2 - x1) * 224),
                "height": round((y2 - y1) * 224),
                "bbox_name": name,
                "synsets": [],
                "name": name.title(),
                "original_x1": ox1,
                "original_y1": oy1,
                "original_x2": ox2,
                "original_y2": oy2,
                "original_width": round(ox2 - ox1, 2),
                "original_height": round(oy2 - oy1, 2),
            }
        )
    by_roi: dict[str, list[str]] = {}
    for sent in sentences:
        for roi in sentence_rois(sent):
            by_roi.setdefault(roi, []).append(sent)
    attributes = []
    for name in ROIS:
        phrases = by_roi.get(name, [])
        if not phrases:
            continue
        attributes.append(
            {
                "bbox_name": name,
                "synsets": [],
                "name": name.title(),
                "attributes": [_phrase_attributes(p, positives) for p in phrases],
                "phrases": phrases,
                "phrase_IDs": [f"{study_id}|{i}" for i in range(len(phrases))],
                "sections": ["finalreport"] * len(phrases),
                "object_id": f"{dicom_id}_{name}",
            }
        )
    return {
        "image_id": dicom_id,
        "viewpoint": "AP/PA",
        "patient_id": None,
        "study_id": str(study_id),
        "objects": objects,
        "attributes": attributes,
        "relationships": [],
    }


# ----------------------------------------------------------------------------- the root


@dataclass(frozen=True)
class ImageSpec:
    """One metadata row, as the generator wrote it (strings exactly as in the CSV)."""

    dicom_id: str
    subject_id: int
    study_id: int
    view_position: str
    rows: int
    columns: int
    study_date: str
    study_time: str


@dataclass(frozen=True)
class StudyTruth:
    """What the generator knows about a study: positive lesions and the report's sections."""

    positives: dict[str, str]  # lesion -> location, in LESIONS order
    findings: str | None
    impression: str | None

    def sentences(self) -> list[str]:
        return sentence_list(self.findings) + sentence_list(self.impression)


#: Every this-many-th frontal image gets one scene-graph defect (cycling through the kinds).
DEFECT_EVERY = 40
DEFECTS = ("missing", "zero_area", "outside", "clip")


def _defect(frontal_seen: int) -> str | None:
    if frontal_seen % DEFECT_EVERY != 7:
        return None
    return DEFECTS[(frontal_seen // DEFECT_EVERY) % len(DEFECTS)]


def _pixel_size(im: ImageSpec, size: int) -> tuple[int, int]:
    """`size` px on the longer side with the metadata's aspect ratio."""
    rows0, cols0 = im.rows or size, im.columns or size
    scale = size / max(rows0, cols0)
    return max(8, round(rows0 * scale)), max(8, round(cols0 * scale))


def _render_image(
    im: ImageSpec, positives: dict[str, str], seed: int, size: int
) -> tuple[np.ndarray, dict[str, Box]]:
    """The picture and its boxes; laterals get no lesions and are mirrored."""
    h, w = _pixel_size(im, size)
    lateral = im.view_position.strip().upper() in ("LATERAL", "LL")
    pix, boxes = render(_rng(seed, im.dicom_id), h, w, {} if lateral else positives)
    if lateral:  # mirrored so they differ from frontals
        pix = np.ascontiguousarray(pix[:, ::-1])
    return pix, boxes


def _write_pixels(root: Path, im: ImageSpec, pix: np.ndarray, formats: tuple[str, ...]) -> None:
    if "dicom" in formats:
        write_dicom(
            root / image_relpath(im.subject_id, im.study_id, im.dicom_id, "dcm"),
            dicom_id=im.dicom_id,
            subject_id=im.subject_id,
            study_id=im.study_id,
            view_position=im.view_position,
            study_date=im.study_date,
            study_time=im.study_time,
            rows=pix.shape[0],
            columns=pix.shape[1],
            pixels=(pix * 4095).astype(np.uint16),
        )
    if "jpg" in formats:
        from PIL import Image

        path = root / image_relpath(im.subject_id, im.study_id, im.dicom_id, "jpg")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((pix * 255).round().astype(np.uint8), mode="L").save(path, quality=95)


def add_images(
    root: Path,
    images: Iterable[ImageSpec],
    studies: Mapping[int, StudyTruth],
    *,
    seed: int,
    size: int,
    formats: tuple[str, ...],
    imagenome: bool,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, int]:
    """Render every image into `root` (DICOM and/or JPG) and, if asked, its scene graph.

    With no `formats` only the scene graphs are written (their boxes are the same: the
    anatomy is drawn before anything else from the image's own random stream).

    `images` and `studies` are the generator's own metadata rows and truth, so nothing is
    re-read or re-parsed from disk. Scene-graph coordinates are in the metadata's
    Rows × Columns (the "original" image) like the real dataset; frontal views (PA/AP) only
    get scene graphs. `progress(done, total)` is called after each image. Returns counts.
    """
    root = Path(root)
    bad = set(formats) - {"dicom", "jpg"}
    if bad:
        raise ValueError(f"unknown image format(s): {sorted(bad)}")
    counts = {"images_dicom": 0, "images_jpg": 0, "scene_graphs": 0, "scene_graph_defects": 0}
    sg_dir = root / "imagenome" / "silver_dataset" / "scene_graph"
    if imagenome:
        sg_dir.mkdir(parents=True, exist_ok=True)
    sentences: dict[int, list[str]] = {}
    frontal_seen = 0
    ordered = sorted(images, key=lambda m: m.dicom_id)
    for done, im in enumerate(ordered, 1):
        truth = studies[im.study_id]
        frontal = im.view_position.strip().upper() in ("PA", "AP")
        if formats:
            pix, boxes = _render_image(im, truth.positives, seed, size)
            _write_pixels(root, im, pix, formats)
            counts["images_dicom"] += "dicom" in formats
            counts["images_jpg"] += "jpg" in formats
        elif imagenome and frontal:  # scene graphs only: the boxes are drawn first
            boxes = anatomy(_rng(seed, im.dicom_id), truth.positives)
        if progress is not None:
            progress(done, len(ordered))
        if not imagenome or not frontal:
            continue
        if im.study_id not in sentences:
            sentences[im.study_id] = truth.sentences()
        frontal_seen += 1
        defect = _defect(frontal_seen)
        counts["scene_graph_defects"] += defect is not None
        sg = scene_graph(
            im.dicom_id,
            im.study_id,
            boxes,
            im.rows or size,
            im.columns or size,
            sentences[im.study_id],
            truth.positives,
            defect,
            max(_pixel_size(im, size)),
        )
        (sg_dir / f"{im.dicom_id}_SceneGraph.json").write_text(
            json.dumps(sg, indent=1), encoding="utf-8"
        )
        counts["scene_graphs"] += 1
    return counts
