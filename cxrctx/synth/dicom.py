"""Tiny but real DICOM files carrying the MIMIC-CXR header fields (pydicom)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"

#: ViewCodeSequence codes (SNOMED-RT style, as seen in chest radiograph headers)
VIEW_CODES = {
    "postero-anterior": "R-10214",
    "antero-posterior": "R-10206",
    "lateral": "R-10232",
    "left lateral": "R-10236",
    "right lateral": "R-10234",
    "left anterior oblique": "R-10220",
    "right anterior oblique": "R-10224",
    "left posterior oblique": "R-10222",
    "right posterior oblique": "R-10226",
    "Recumbent": "F-10450",
    "Erect": "F-10440",
}


def uid_from(kind: str, value: str | int) -> str:
    """A deterministic 2.25 UID (UUID-derived integer form) for `kind:value`."""
    digest = hashlib.sha256(f"cxrctx-synth:{kind}:{value}".encode()).digest()[:16]
    return "2.25." + str(int.from_bytes(digest, "big"))


def _code_item(meaning: str, scheme: str = "SRT") -> Dataset:
    item = Dataset()
    item.CodeValue = VIEW_CODES.get(meaning, "Y-X1770")
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def default_pixels(rows: int, columns: int, seed: int = 0) -> np.ndarray:
    """A plain chest-like gradient (uint8) used when no pixels are given."""
    y = np.linspace(0.0, 1.0, rows)[:, None]
    x = np.linspace(-1.0, 1.0, columns)[None, :]
    img = 40 + 150 * (1 - np.abs(x)) * (0.6 + 0.4 * y) + (seed % 7)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_dicom(
    path: str | os.PathLike,
    *,
    dicom_id: str,
    subject_id: int,
    study_id: int,
    view_position: str | None,
    study_date: str,
    study_time: str | None,
    rows: int,
    columns: int,
    pixels: np.ndarray | None = None,
    performed_procedure: str | None = None,
    procedure_meaning: str | None = None,
    view_meaning: str | None = None,
    orientation_meaning: str | None = None,
) -> None:
    """Write one DX DICOM whose header carries the MIMIC-CXR metadata fields.

    `study_time` is the DICOM TM text (``HHMMSS.fff``; the CSV's float text such as
    ``80556.875`` is zero-padded here) or None/"" for a missing time; StudyTime is then present but empty (type 2), as the metadata CSV is
    blank. `pixels` must be a 2-D uint8/uint16 array of shape (rows, columns); None gives a
    plain gradient of that size. Everything is derived from the arguments, so the same
    call writes the same bytes.
    """
    if study_time:
        whole, dot, frac = str(study_time).partition(".")
        if whole.isdigit() and len(whole) < 6:  # MIMIC's CSV float text: restore the zeros
            study_time = whole.zfill(6) + dot + frac
    if pixels is None:
        pixels = default_pixels(rows, columns, seed=study_id)
    pixels = np.ascontiguousarray(pixels)
    if pixels.ndim != 2 or pixels.shape != (rows, columns):
        raise ValueError(f"pixels shape {pixels.shape} != (rows, columns) = ({rows}, {columns})")
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"pixels must be uint8 or uint16, not {pixels.dtype}")

    sop_uid = uid_from("sop", dicom_id)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "CXRCTX_SYNTH"

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.StudyTime = study_time or ""
    ds.AccessionNumber = str(study_id)
    ds.Modality = "DX"
    ds.Manufacturer = "cxrctx synthetic"
    if procedure_meaning:
        ds.ProcedureCodeSequence = [_code_item(procedure_meaning, "CXRCTX")]
    ds.PatientName = "___"
    ds.PatientID = str(subject_id)
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PerformedProcedureStepDescription = performed_procedure or ""
    ds.ViewPosition = view_position or ""
    ds.StudyInstanceUID = uid_from("study", study_id)
    ds.SeriesInstanceUID = uid_from("series", dicom_id)
    ds.StudyID = str(study_id)
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if view_meaning:
        ds.ViewCodeSequence = [_code_item(view_meaning)]
    if orientation_meaning:
        ds.PatientOrientationCodeSequence = [_code_item(orientation_meaning, "SRT")]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OB" if bits == 8 else "OW"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
