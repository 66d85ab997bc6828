"""Join records + lesion labels + ROIs into training items; crop ROIs from DICOM/JPG; cache crops.

One item = one frontal image with its 11 ROIs (the paper trains on images: 111,326 of them).
Per item: 11 ROI crops and the full image resized (the classifier's input), 14 lesion
targets, each ROI's sentences as token ids, and each ROI's LLCL key — a bit mask of the
positive lesions that concern that ROI (`cxrctx.imagenome.lesion_rois`).

Every problem with one item (study not in records, no labels, image missing, unreadable or
corrupt) is a recorded skip with its reason; `prepare()` decodes every image once up front
(building the crop cache), so nothing fails deep inside a training loop. Box coordinates
are in the original image's pixels (the record's rows/columns); an image file of another
size (a down-scaled JPG copy) is handled by scaling the boxes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from cxrctx.errors import CxrctxError
from cxrctx.imagenome import read_rois
from cxrctx.io import open_stage, read_shards, shard_paths
from cxrctx.vocab import DICOM_ID_RE, LESIONS, ROIS, lesion_rois

log = logging.getLogger(__name__)

LESION_INDEX = {name: i for i, name in enumerate(LESIONS)}
ROI_INDEX = {name: i for i, name in enumerate(ROIS)}


@dataclass
class Item:
    dicom_id: str
    study_id: int
    subject_id: int
    split: str | None
    path: str
    rows: int | None
    columns: int | None
    boxes: list[tuple[float, float, float, float]]
    texts: list[str]  # per ROI: its sentences joined ("" when none)
    targets: list[float]  # 14 lesion statuses (1 positive)
    roi_keys: list[int]  # 11 LLCL bit masks
    labeled: bool = True
    view_position: str | None = None
    abnormal: list[bool] = field(default_factory=lambda: [False] * len(ROIS))  # per ROI


@dataclass
class Joined:
    items: list[Item]
    skips: list[dict] = field(default_factory=list)

    def skip_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(s["reason"].split(":")[0] for s in self.skips).items()))


def _labels_path(labels: str | os.PathLike) -> Path:
    p = Path(labels)
    if (p / "labels").is_dir():
        p = p / "labels"
    if not shard_paths(p):
        raise CxrctxError(f"{labels}: no label shards (labels/part-*.parquet) found")
    return p


def read_label_shards(labels: str | os.PathLike) -> pl.DataFrame:
    """Label rows of a label-lesions output (checked against its manifest), or of a folder
    of ground-truth label shards without one (the synthetic generator's `truth/`)."""
    if any((Path(labels) / name).is_file() for name in ("manifest.json", "../manifest.json")):
        df = open_stage(labels, "label-lesions").read()
        p = Path(labels)
    else:
        p = _labels_path(labels)
        try:
            df = read_shards(p)
        except Exception as e:
            raise CxrctxError(f"{labels}: cannot read label shards ({e})") from e
    need = {"id", "lesion", "status", "location"}
    if not need <= set(df.columns):
        raise CxrctxError(f"{p}: label shards lack column(s) {sorted(need - set(df.columns))}")
    # a run labeled with `--uncertain keep` writes status "uncertain" (its manifest says
    # so); the trainer reads it as positive, the labeler's default policy (U-Ones)
    status = pl.when(pl.col("status") == "uncertain").then(pl.lit("positive")).otherwise("status")
    return df.select(pl.col("id").cast(pl.String), "lesion", status.alias("status"), "location")


def label_table(labels: pl.DataFrame) -> dict[str, dict[str, str]]:
    """id → {lesion: location} of positive lesions; ids with any label row are present."""
    out: dict[str, dict[str, str]] = {}
    for id_, lesion, status, location in labels.iter_rows():
        d = out.setdefault(id_, {})
        if status == "positive" and lesion in LESION_INDEX:
            d[lesion] = location or "not mentioned"
    return out


def roi_keys(positives: dict[str, str]) -> list[int]:
    keys = [0] * len(ROIS)
    for lesion, location in positives.items():
        for roi in lesion_rois(lesion, location):
            keys[ROI_INDEX[roi]] |= 1 << LESION_INDEX[lesion]
    return keys


_NEGATED = re.compile(
    r"\b(no|not|without|negative|normal|clear|unremarkable|resolved|free of|absent)\b", re.I
)


def findings_first(sentences: list[str]) -> list[str]:
    """Affirmative sentences before negated ones (stable): greedy decoding writes the start
    of a text most reliably, so an abnormal region's text should start with its finding."""
    return sorted(sentences, key=lambda t: bool(_NEGATED.search(t)))


def unsafe_reason(dicom_id: object, path: object) -> str | None:
    """Why a ROI row cannot be used safely: an id that is not MIMIC's (it names cache files)
    or an image path that could leave the image root; None when both are fine."""
    if not isinstance(dicom_id, str) or not DICOM_ID_RE.match(dicom_id):
        return "invalid dicom_id: not five dash-joined groups of 8 hex digits"
    p = Path(str(path or ""))
    if not str(path or "") or p.is_absolute() or ".." in p.parts or "\\" in str(path):
        return "invalid image path: must stay inside the image root"
    return None


def join(
    *,
    records: str | os.PathLike,
    labels: str | os.PathLike | None,
    rois: str | os.PathLike,
    require_labels: bool = True,
    order_findings_first: bool = False,
) -> Joined:
    """Join the three inputs. Raises when they do not overlap at all (e.g. labels for other ids)."""
    try:
        recs = open_stage(records, "build-priors").read().select("study_id", "split")
    except CxrctxError as e:
        raise CxrctxError(f"--records: {e}") from None
    split_of = dict(recs.iter_rows())
    roi_df = read_rois(rois)
    table = label_table(read_label_shards(labels)) if labels is not None else {}
    if labels is not None and roi_df.height:
        overlap = sum(str(s) in table for s in roi_df["study_id"].unique().to_list())
        if overlap == 0:
            raise CxrctxError(
                f"{labels}: the label shards' ids match none of the {roi_df['study_id'].n_unique()} studies in {rois} "
                "(labels for another dataset?)"
            )
    items: list[Item] = []
    skips: list[dict] = []
    for r in roi_df.iter_rows(named=True):
        why = _skip_reason(r, split_of, table, require_labels and labels is not None)
        if why:
            skips.append({"dicom_id": str(r["dicom_id"]), "study_id": r["study_id"], "reason": why})
        else:
            items.append(_item(r, split_of[r["study_id"]], table, order_findings_first))
    return Joined(items=items, skips=skips)


def _sorted_rois(r: dict) -> list[dict]:
    return sorted(r["rois"], key=lambda x: ROI_INDEX.get(x["name"], 99))


def _skip_reason(
    r: dict, split_of: dict, table: dict[str, dict[str, str]], need_labels: bool
) -> str | None:
    """Why a ROI row cannot become a training item (None: it can)."""
    bad = unsafe_reason(r["dicom_id"], r["path"])
    if bad:
        return bad
    if r["study_id"] not in split_of:
        return "study not in records"
    if need_labels and str(r["study_id"]) not in table:
        return "no labels for study"
    if [x["name"] for x in _sorted_rois(r)] != list(ROIS):
        return "ROI row without the 11 ROIs"
    return None


def _item(
    r: dict, split: str, table: dict[str, dict[str, str]], order_findings_first: bool
) -> Item:
    """One training item: boxes and sentences in ROIS order, lesion targets, ROI keys."""
    key = str(r["study_id"])
    pos = table.get(key, {})
    rois_sorted = _sorted_rois(r)
    return Item(
        dicom_id=r["dicom_id"],
        study_id=r["study_id"],
        subject_id=r["subject_id"],
        split=split,
        path=r["path"],
        rows=r["rows"],
        columns=r["columns"],
        boxes=[(x["x1"], x["y1"], x["x2"], x["y2"]) for x in rois_sorted],
        texts=[
            " ".join(
                findings_first(list(x["sentences"] or []))
                if order_findings_first
                else x["sentences"] or []
            )
            for x in rois_sorted
        ],
        targets=[1.0 if les in pos else 0.0 for les in LESIONS],
        roi_keys=roi_keys(pos),
        labeled=key in table,
        view_position=r["view_position"],
        abnormal=[bool(x.get("abnormal")) for x in rois_sorted],
    )


# ----------------------------------------------------------------------------- images


class ImageError(Exception):
    """A per-item image problem (becomes a recorded skip)."""


def load_image(path: Path) -> np.ndarray:
    """Grey image as float32 in [0, 1] (H × W) from a DICOM or any Pillow-readable file."""
    if not path.exists():
        raise ImageError(f"image missing: {path.name}")
    if path.suffix.lower() == ".dcm":
        import pydicom

        try:
            ds = pydicom.dcmread(str(path))
            arr = ds.pixel_array.astype(np.float32)
        except Exception as e:
            raise ImageError(f"corrupt DICOM: {path.name}: {type(e).__name__}") from e
        if arr.ndim != 2:
            arr = (
                arr.reshape(arr.shape[-2], arr.shape[-1])
                if arr.size == arr.shape[-1] * arr.shape[-2]
                else arr[..., 0]
            )
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        inter = float(getattr(ds, "RescaleIntercept", 0) or 0)
        arr = arr * slope + inter
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
            arr = 1.0 - arr
        return arr.astype(np.float32)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ImageError(f"unreadable image: {path.name}: {type(e).__name__}") from e


def _resize(arr: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    im = Image.fromarray(arr.astype(np.float32), mode="F").resize(
        (size, size), Image.Resampling.BILINEAR
    )
    return np.asarray(im, dtype=np.float32)


def crop_item(
    item: Item, images_root: Path, size: int, global_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(11 × size × size ROI crops, global_size × global_size full image), uint8."""
    p = Path(item.path)
    if p.is_absolute() or ".." in p.parts:
        raise ImageError("invalid image path: must stay inside the image root")
    img = load_image(images_root / p)
    h, w = img.shape
    sx = w / item.columns if item.columns else 1.0
    sy = h / item.rows if item.rows else 1.0
    crops = np.zeros((len(ROIS), size, size), np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(item.boxes):
        a, b = int(np.floor(x1 * sx)), int(np.floor(y1 * sy))
        c, d = int(np.ceil(x2 * sx)), int(np.ceil(y2 * sy))
        a, b, c, d = max(0, a), max(0, b), min(w, max(c, a + 1)), min(h, max(d, b + 1))
        if c <= a or d <= b:
            raise ImageError(f"ROI '{ROIS[i]}' falls outside the image: {Path(item.path).name}")
        crops[i] = np.clip(_resize(img[b:d, a:c], size) * 255 + 0.5, 0, 255).astype(np.uint8)
    glob = np.clip(_resize(img, global_size) * 255 + 0.5, 0, 255).astype(np.uint8)
    return crops, glob


class CropStore:
    """Decoded crops for (image, size): from the .npz cache when enabled, else decoded each time."""

    def __init__(
        self,
        images_root: str | os.PathLike,
        cache_dir: str | os.PathLike | None,
        size: int,
        global_size: int,
    ):
        self.images_root = Path(images_root)
        self.size, self.global_size = size, global_size
        self.cache_dir = (
            Path(cache_dir) / f"crops_{size}_{global_size}" if cache_dir is not None else None
        )

    def _cache_path(self, item: Item) -> Path | None:
        if self.cache_dir is None:
            return None
        if not DICOM_ID_RE.match(item.dicom_id):  # the id names the file: never outside the cache
            raise ImageError("invalid dicom_id: not five dash-joined groups of 8 hex digits")
        return self.cache_dir / item.dicom_id[:2] / f"{item.dicom_id}.npz"

    def get(self, item: Item) -> tuple[np.ndarray, np.ndarray]:
        cp = self._cache_path(item)
        if cp is not None and cp.exists():
            try:
                with np.load(cp, allow_pickle=False) as z:
                    return z["rois"], z["glob"]
            except (OSError, ValueError, KeyError):
                cp.unlink(missing_ok=True)  # a torn cache file is rebuilt
        crops, glob = crop_item(item, self.images_root, self.size, self.global_size)
        if cp is not None:
            self._write(cp, crops, glob)
        return crops, glob

    @staticmethod
    def _write(cp: Path, crops: np.ndarray, glob: np.ndarray) -> None:
        """Write one cache entry atomically; a full disk or a read-only folder is fatal
        (a one-line error naming the cache), not a per-image skip."""
        tmp = cp.with_suffix(f".{os.getpid()}.tmp.npz")
        try:
            cp.parent.mkdir(parents=True, exist_ok=True)
            np.savez(tmp, rois=crops, glob=glob)
            os.replace(tmp, cp)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise CxrctxError(
                f"{cp.parent}: cannot write the crop cache ({e.strerror or e}); free space or "
                "--set crop_cache=false"
            ) from None

    def check(self, item: Item) -> str | None:
        """Decode (and cache) one item; the skip reason, or None when it is usable."""
        try:
            self.get(item)
        except ImageError as e:
            return str(e)
        return None

    def prepare(self, items: list[Item], *, workers: int = 0) -> tuple[list[Item], list[dict]]:
        """Decode every item once (filling the cache); return (good items, skips with reasons).

        DICOM decoding holds the GIL, so `workers` > 0 uses processes, not threads.
        """
        if workers > 0 and len(items) > 64:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(workers) as ex:
                reasons = list(ex.map(self.check, items, chunksize=32))
        else:
            reasons = [self.check(it) for it in items]
        good, skips = [], []
        for it, why in zip(items, reasons, strict=True):
            if why is None:
                good.append(it)
            else:
                skips.append({"dicom_id": it.dicom_id, "study_id": it.study_id, "reason": why})
        return good, skips


# ----------------------------------------------------------------------------- torch side


class RoiDataset:
    """torch-style dataset over prepared items (tokenised once)."""

    def __init__(self, items: list[Item], store: CropStore, tokenizer, max_tokens: int):
        self.items, self.store = items, store
        self.tokens = np.asarray(
            [[tokenizer.encode(t, max_tokens) for t in it.texts] for it in items], dtype=np.int64
        )
        self.has_text = np.asarray([[bool(t) for t in it.texts] for it in items], dtype=bool)
        # identical texts share an id (ITCL treats them as the same caption, not as negatives)
        ids: dict[str, int] = {}
        self.text_ids = np.asarray(
            [[ids.setdefault(t, len(ids)) for t in it.texts] for it in items], dtype=np.int64
        )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict | None:
        import torch

        it = self.items[i]
        try:
            crops, glob = self.store.get(it)
        except ImageError as e:  # only reachable without the prepare() pass
            log.warning("skipping %s: %s", it.dicom_id, e)
            return None
        return {
            "index": torch.tensor(i),
            "rois": torch.from_numpy(crops.astype(np.float32) / 255.0),
            "glob": torch.from_numpy(glob.astype(np.float32) / 255.0),
            "tokens": torch.from_numpy(self.tokens[i]),
            "has_text": torch.from_numpy(self.has_text[i]),
            "text_ids": torch.from_numpy(self.text_ids[i]),
            "targets": torch.tensor(it.targets, dtype=torch.float32),
            "roi_keys": torch.tensor(it.roi_keys, dtype=torch.int64),
            "abnormal": torch.tensor(it.abnormal, dtype=torch.float32),
        }


def collate(batch: list[dict | None]) -> dict:
    """Stack items; items that failed to load are dropped and counted in `dropped`."""
    import torch

    good = [b for b in batch if b is not None]
    out: dict = {"dropped": len(batch) - len(good)}
    if not good:
        return out
    for k in good[0]:
        out[k] = torch.stack([b[k] for b in good])
    return out
