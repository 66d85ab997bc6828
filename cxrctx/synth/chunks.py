"""Report text, truth labels and CheXpert-style labels, one chunk of patients at a time.

A chunk draws from its own `random.Random` seeded from (seed, chunk index), so the output
is the same whether chunks run in this process or in worker processes. Each chunk writes
its report files (and tiny DICOMs) itself and returns what the tables need.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from random import Random
from typing import Any

from cxrctx.synth import report as R
from cxrctx.synth import text as T
from cxrctx.synth.dicom import write_dicom
from cxrctx.vocab import CHEXPERT_LABELS, LESIONS

_MENTION_TO_CHEX = {"pos": "1.0", "hedged": "-1.0", "neg": "0.0", "nm": None}
_CHEX_SOURCE = {
    "Atelectasis": ("atelectasis",),
    "Cardiomegaly": ("cardiomegaly",),
    "Consolidation": ("consolidation",),
    "Edema": ("edema",),
    "Lung Lesion": ("nodule", "mass"),
    "Lung Opacity": ("consolidation", "infiltration", "atelectasis", "pneumonia", "edema"),
    "Pleural Effusion": ("pleural effusion",),
    "Pleural Other": ("pleural thickening",),
    "Pneumonia": ("pneumonia",),
    "Pneumothorax": ("pneumothorax",),
}
_RANK = {"pos": 3, "hedged": 2, "neg": 1, "nm": 0}

SPEC_FIELDS = tuple(R.Spec.__dataclass_fields__)
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)


def chexpert(r: Random, c: T.Content, noise: float) -> list[str | None]:
    """CheXpert-style labels derived from the truth, with labeler-like noise."""
    mention = {les: t[3] for les, t in c.truth.items()}
    out: list[str | None] = []
    any_pos = (
        any(m in ("pos", "hedged") for m in mention.values()) or c.devices or c.fracture == "pos"
    )
    for col in CHEXPERT_LABELS:
        if col in _CHEX_SOURCE:
            best = max((mention[les] for les in _CHEX_SOURCE[col]), key=_RANK.__getitem__)
            if col == "Lung Opacity" and best == "neg":
                best = "nm"
            val = _MENTION_TO_CHEX[best]
        elif col == "Enlarged Cardiomediastinum":
            val = "1.0" if mention["cardiomegaly"] == "pos" and r.random() < 0.25 else None
        elif col == "Fracture":
            val = _MENTION_TO_CHEX[c.fracture]
        elif col == "No Finding":
            val = None if any_pos else "1.0"
        else:  # Support Devices
            val = "1.0" if c.devices else None
        if r.random() < noise:
            val = {"1.0": "-1.0", "-1.0": "1.0", "0.0": None, None: None}[val]
        out.append(val)
    return out


@dataclass
class Chunk:
    """One chunk's input: per study in chunk order a spec row and its DICOM arguments."""

    index: int
    seed: int
    root: str
    specs: list[tuple[Any, ...]]  # (rel_path, patient_first, R.Spec fields...)
    images: list[list[dict[str, Any]]]  # per study: write_dicom keyword arguments + "path"
    keep_text: bool


@dataclass
class ChunkResult:
    """Per study in chunk order (status/location/rationale: 14 entries per study)."""

    texts: list[str] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    location: list[str] = field(default_factory=list)
    rationale: list[str] = field(default_factory=list)
    chexpert: list[list[str | None]] = field(default_factory=list)
    negbio: list[list[str | None]] = field(default_factory=list)
    sections: list[dict[str, str | None]] = field(default_factory=list)
    reason_for_exam: list[str | None] = field(default_factory=list)
    temporal: list[bool] = field(default_factory=list)
    n_dicom: int = 0

    def extend(self, other: ChunkResult) -> None:
        for name in self.__dataclass_fields__:
            if name == "n_dicom":
                self.n_dicom += other.n_dicom
            else:
                getattr(self, name).extend(getattr(other, name))


def _write_report(root: str, rel: str, text: str, made_dirs: set[str]) -> None:
    parent = os.path.dirname(rel)
    if parent not in made_dirs:
        os.makedirs(f"{root}/{parent}", exist_ok=True)
        made_dirs.add(parent)
    fd = os.open(f"{root}/{rel}", _WRITE_FLAGS, 0o666)
    try:
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


def _record(res: ChunkResult, r: Random, b: R.Built, keep_text: bool) -> None:
    if keep_text:
        res.texts.append(b.text)
    for les in LESIONS:
        st, loc, rat, _ = b.content.truth[les]
        res.status.append(st)
        res.location.append(loc)
        res.rationale.append(rat)
    res.chexpert.append(chexpert(r, b.content, 0.02))
    res.negbio.append(chexpert(r, b.content, 0.04))
    res.sections.append(b.sections)
    res.reason_for_exam.append(b.reason_for_exam)
    res.temporal.append(b.temporal)


def run_chunk(ch: Chunk) -> ChunkResult:
    """Build, write and record every study of the chunk (the report's `prev` is per patient)."""
    r = Random(ch.seed)
    res = ChunkResult()
    prev: T.State = {}
    made_dirs: set[str] = set()
    for spec_row, imgs in zip(ch.specs, ch.images, strict=True):
        rel, first = spec_row[0], spec_row[1]
        if first:
            prev = {}
        b = R.build(r, R.Spec(*spec_row[2:]), prev)
        prev = b.content.state
        _write_report(ch.root, rel, b.text, made_dirs)
        _record(res, r, b, ch.keep_text)
        for args in imgs:
            write_dicom(
                f"{ch.root}/{args['path']}", **{k: v for k, v in args.items() if k != "path"}
            )
            res.n_dicom += 1
    return res
