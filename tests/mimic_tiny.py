"""Hand-made tiny MIMIC-CXR roots for unit tests (independent of the synthetic generator)."""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
from pathlib import Path

from cxrctx.mimic.layout import LABEL_COLUMNS, METADATA_COLUMNS, SPLIT_COLUMNS, report_relpath

REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___ year old man with cough  // eval for pneumonia

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 The lungs are clear.  There is no pleural effusion or pneumothorax.  The
 cardiomediastinal silhouette is normal.

 IMPRESSION:

 No acute cardiopulmonary process.
"""


def dicom_id(n: int) -> str:
    h = f"{n:08x}"
    return "-".join([h] * 5)


def study(
    subject_id,
    study_id,
    date="21500101",
    time="80556.875",
    views=("PA", "LATERAL"),
    report=REPORT,
    first_image=None,
):
    """A study spec; `report` may be str, bytes or None (no report file)."""
    base = first_image if first_image is not None else study_id % 10_000_000
    images = [(dicom_id(base * 10 + i), v) for i, v in enumerate(views)]
    return {
        "subject_id": subject_id,
        "study_id": study_id,
        "date": date,
        "time": time,
        "images": images,
        "report": report,
    }


def _csv_bytes(header, rows) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode()


def write_root(
    root: Path,
    studies: list[dict],
    *,
    gz: bool = True,
    split: bool = True,
    labels: bool = True,
    zip_reports: bool = False,
    size: tuple[int, int] = (3056, 2544),
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    ext = ".csv.gz" if gz else ".csv"
    meta_rows, split_rows, label_rows = [], [], []
    for s in studies:
        for did, view in s["images"]:
            meta_rows.append(
                [
                    did,
                    s["subject_id"],
                    s["study_id"],
                    "CHEST (PA AND LAT)",
                    view,
                    *size,
                    s["date"],
                    s["time"],
                    "CHEST (PA AND LAT)",
                    "postero-anterior",
                    "Erect",
                ]
            )
            split_rows.append([did, s["study_id"], s["subject_id"], "train"])
        label_rows.append([s["subject_id"], s["study_id"], "1.0", "", "0.0", "-1.0", *[""] * 10])
    files = {
        f"mimic-cxr-2.0.0-metadata{ext}": _csv_bytes(METADATA_COLUMNS, meta_rows),
    }
    if split:
        files[f"mimic-cxr-2.0.0-split{ext}"] = _csv_bytes(SPLIT_COLUMNS, split_rows)
    if labels:
        files[f"mimic-cxr-2.0.0-chexpert{ext}"] = _csv_bytes(LABEL_COLUMNS, label_rows)
    for name, data in files.items():
        (root / name).write_bytes(gzip.compress(data, mtime=0) if gz else data)
    zf = zipfile.ZipFile(root / "mimic-cxr-reports.zip", "w") if zip_reports else None
    for s in studies:
        if s["report"] is None:
            continue
        rel = report_relpath(s["subject_id"], s["study_id"])
        data = s["report"].encode() if isinstance(s["report"], str) else s["report"]
        if zf is not None:
            zf.writestr(rel, data)
        else:
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
    if zf is not None:
        zf.close()
    return root
