"""Small synthetic roots for the trainer tests: images + scene graphs + truth + records + ROIs.

`make_root` prefers the project's generator (`cxrctx.synth.generate`); `fabricate_root`
is a hand-made fallback with a few visually strong lesions, independent of it.
"""

from __future__ import annotations

import csv
import gzip
import io
import random
from pathlib import Path

import polars as pl

from cxrctx.models import LESIONS

SENT = {
    "cardiomegaly": "The heart is enlarged.",
    "pleural effusion": "There is a {side} pleural effusion.",
    "pneumothorax": "There is a {side} pneumothorax.",
    "consolidation": "There is consolidation in the {side} lower lobe.",
    "edema": "There is pulmonary edema.",
}
NEG = "No pneumothorax. The lungs are otherwise clear."


def _dicom_id(n: int) -> str:
    h = f"{n:08x}"
    return "-".join([h, h, h, h, h])


def fabricate_root(root: Path, n_studies: int = 60, seed: int = 0) -> Path:
    rnd = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    meta, split_rows, labels = [], [], []
    for i in range(n_studies):
        subject = 10000000 + i // 2
        study = 50000000 + i
        pos: dict[str, str] = {}
        for les in SENT:
            if rnd.random() < 0.3:
                pos[les] = (
                    rnd.choice(("left", "right")) if "{side}" in SENT[les] else "not mentioned"
                )
        sentences = [SENT[les].format(side=loc) for les, loc in pos.items()] or [
            "The lungs are clear.",
            "The heart size is normal.",
        ]
        if "pneumothorax" not in pos:
            sentences.append("No pneumothorax.")
        rel = Path("files") / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}.txt"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(
            "                                 FINAL REPORT\n EXAMINATION:  CHEST (PA)\n\n FINDINGS:\n\n "
            + "  ".join(sentences)
            + "\n\n IMPRESSION:\n\n "
            + (sentences[0])
            + "\n"
        )
        split = "train" if i % 5 < 3 else "validate" if i % 5 == 3 else "test"
        for v, view in enumerate(("PA",)):
            did = _dicom_id(i * 4 + v + 1)
            meta.append(
                [
                    did,
                    subject,
                    study,
                    "CHEST (PA)",
                    view,
                    512,
                    480,
                    "21800101",
                    f"{80000 + i}.000",
                    "",
                    "",
                    "",
                ]
            )
            split_rows.append([did, study, subject, split])
        for les in LESIONS:
            p = les in pos
            labels.append(
                {
                    "id": str(study),
                    "lesion": les,
                    "status": "positive" if p else "negative",
                    "location": pos.get(les, "not mentioned"),
                    "rationale": "",
                }
            )
    head = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns", "StudyDate", "StudyTime",
            "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"]  # fmt: skip
    for name, h, rows in (
        ("metadata", head, meta),
        ("split", ["dicom_id", "study_id", "subject_id", "split"], split_rows),
    ):
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(h)
        w.writerows(rows)
        (root / f"mimic-cxr-2.0.0-{name}.csv.gz").write_bytes(
            gzip.compress(buf.getvalue().encode(), mtime=0)
        )
    (root / "truth" / "labels").mkdir(parents=True, exist_ok=True)
    pl.DataFrame(labels).write_parquet(root / "truth" / "labels" / "part-00000.parquet")
    return root


def resplit(records: Path, heldout_every: int = 4) -> None:
    """Move every `heldout_every`-th patient to 'validate' and the next one to 'test' (MIMIC's split is ~98% train)."""
    from cxrctx.shards import read_shards, write_shards

    recs = read_shards(records / "records")
    subjects = sorted(recs["subject_id"].unique().to_list())
    val = set(subjects[::heldout_every])
    test = set(subjects[1 :: heldout_every * 2])
    recs = recs.with_columns(
        pl.when(pl.col("subject_id").is_in(list(val)))
        .then(pl.lit("validate"))
        .when(pl.col("subject_id").is_in(list(test)))
        .then(pl.lit("test"))
        .otherwise(pl.lit("train"))
        .alias("split")
    )
    write_shards(recs, records / "records", 1_000_000)


def make_root(
    tmp: Path,
    *,
    patients: int = 40,
    size: int = 96,
    image_format: str = "jpg",
    seed: int = 0,
    heldout_every: int | None = 4,
) -> dict[str, Path]:
    """The project's generator (`cxrctx synth --images --imagenome`) → records → ROIs."""
    from cxrctx.imagenome import build_rois
    from cxrctx.mimic.build import build_priors
    from cxrctx.synth import generate

    root = tmp / "root"
    generate(
        root,
        patients=patients,
        seed=seed,
        images=True,
        imagenome=True,
        image_size=size,
        image_format=image_format,
        dicom=image_format != "jpg",
    )
    build_priors(
        root, tmp / "priors", image_ext="jpg" if image_format == "jpg" else "dcm", workers=1
    )
    if heldout_every:
        resplit(tmp / "priors", heldout_every)
    build_rois(root / "imagenome", records=tmp / "priors", out=tmp / "rois")
    return {"root": root, "records": tmp / "priors", "rois": tmp / "rois", "labels": root / "truth"}


def prepare(
    tmp: Path,
    *,
    n_studies: int = 60,
    size: int = 96,
    formats: tuple[str, ...] = ("jpg",),
    seed: int = 0,
) -> dict[str, Path]:
    """Root with images + scene graphs, then records (build-priors) and ROIs (build-rois)."""
    from cxrctx.imagenome import build_rois
    from cxrctx.mimic.build import build_priors
    from cxrctx.synth_images import add_images

    root = fabricate_root(tmp / "root", n_studies=n_studies, seed=seed)
    add_images(root, seed=seed, size=size, formats=formats, imagenome=True)
    build_priors(root, tmp / "priors", image_ext="jpg" if formats == ("jpg",) else "dcm", workers=1)
    build_rois(root / "imagenome", records=tmp / "priors", out=tmp / "rois")
    return {"root": root, "records": tmp / "priors", "rois": tmp / "rois", "labels": root / "truth"}
