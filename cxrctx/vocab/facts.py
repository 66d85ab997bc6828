"""Shared domain facts: lesions, sections, flags, ROI names and the MIMIC-CXR path layout.

Every stage takes its vocabulary from here (never from another stage), so that one fact has
one definition (re-exported from `cxrctx.vocab`; the clinical lexicon is in `lexicon.py`).

MIMIC-CXR facts used below: reports live at ``files/pNN/pSUBJECT/sSTUDY.txt`` and images
at ``files/pNN/pSUBJECT/sSTUDY/DICOM_ID.dcm`` (``.jpg`` in MIMIC-CXR-JPG), where ``pNN``
is "p" + the first two digits of the 8-digit subject_id; study_ids are 8 digits starting
with 5; dicom_ids are five dash-joined groups of hex digits.
"""

from __future__ import annotations

import re

#: The canonical report sections, in report order.
SECTIONS: tuple[str, ...] = (
    "examination",
    "indication",
    "history",
    "technique",
    "comparison",
    "findings",
    "impression",
)

#: The `section` of a label row whose study has text only in header sections (examination,
#: indication, history, technique, comparison): not read (an indication names the question,
#: not a finding), every lesion not mentioned.
HEADER_ONLY = "header_only"


#: The 14 CLALA-Net lesions, lower case, in this fixed order.
LESIONS: tuple[str, ...] = (
    "cardiomegaly",
    "emphysema",
    "pleural effusion",
    "hernia",
    "nodule",
    "pneumothorax",
    "atelectasis",
    "pleural thickening",
    "mass",
    "edema",
    "consolidation",
    "infiltration",
    "fibrosis",
    "pneumonia",
)


LOCATIONS: tuple[str, ...] = ("left", "right", "bilateral", "not mentioned")


#: The 14 CheXpert/NegBio label columns of MIMIC-CXR, as they appear in the CSVs.
CHEXPERT_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)


#: Record flags (see README: record contract).
FLAGS: tuple[str, ...] = (
    "missing_study_time",
    "missing_study_datetime",
    "same_time_ambiguous",
    "same_day_unordered",
    "no_findings",
    "no_impression",
    "no_images",
    "temporal_reference_without_prior",
    "only_last_paragraph",
)


#: The 11 CLALA-Net ROIs, in this fixed order (the model's ROI axis).
ROIS: tuple[str, ...] = (
    "left lung",
    "right lung",
    "left lower lung zone",
    "right lower lung zone",
    "left hilar structures",
    "right hilar structures",
    "mediastinum",
    "upper mediastinum",
    "left costophrenic angle",
    "right costophrenic angle",
    "cardiac silhouette",
)
#: Patient side of each ROI ("center" for midline structures).
ROI_SIDE: dict[str, str] = {
    r: ("left" if r.startswith("left") else "right" if r.startswith("right") else "center")
    for r in ROIS
}

#: Which ROIs a positive lesion concerns. The paper pairs ROIs "annotated with the same lesion
#: type ... and located in the same anatomical region" but gives no lesion→region table; this
#: one is our choice (radiological common sense), used by the synthetic renderer, by LLCL pair
#: construction and nowhere else. Lateral ROIs apply on the label's side (both sides for
#: bilateral / not mentioned); midline ROIs apply regardless of side.
LESION_ROI_KINDS: dict[str, tuple[str, ...]] = {
    "cardiomegaly": ("cardiac silhouette",),
    "emphysema": ("lung",),
    "pleural effusion": ("lung", "lower lung zone", "costophrenic angle"),
    "hernia": ("mediastinum",),
    "nodule": ("lung",),
    "pneumothorax": ("lung",),
    "atelectasis": ("lung", "lower lung zone"),
    "pleural thickening": ("lung", "costophrenic angle"),
    "mass": ("lung", "hilar structures"),
    "edema": ("lung", "hilar structures"),
    "consolidation": ("lung", "lower lung zone"),
    "infiltration": ("lung", "lower lung zone"),
    "fibrosis": ("lung", "lower lung zone"),
    "pneumonia": ("lung", "lower lung zone"),
}


def lesion_rois(lesion: str, location: str) -> list[str]:
    """ROIs (names, in ROIS order) that a positive `lesion` at `location` concerns."""
    kinds = LESION_ROI_KINDS.get(lesion, ())
    sides = {"left": ("left",), "right": ("right",)}.get(location, ("left", "right"))
    out = []
    for roi in ROIS:
        side = ROI_SIDE[roi]
        kind = roi if side == "center" else roi.split(" ", 1)[1]
        if kind in kinds and (side == "center" or side in sides):
            out.append(roi)
    return out


PREFIX = "mimic-cxr-2.0.0-"
METADATA_COLUMNS: tuple[str, ...] = (
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
SPLIT_COLUMNS: tuple[str, ...] = ("dicom_id", "study_id", "subject_id", "split")
LABEL_COLUMNS: tuple[str, ...] = ("subject_id", "study_id", *CHEXPERT_LABELS)
SPLITS = ("train", "validate", "test")

#: Report paths look like files/p10/p10000032/s50414267.txt (any prefix before files/).
REPORT_RE = re.compile(r"(?:^|/)p\d{2}/p(\d+)/s(\d+)\.txt$")


def label_key(name: str) -> str:
    """'Enlarged Cardiomediastinum' → 'enlarged_cardiomediastinum' (struct field names)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


LABEL_KEYS: tuple[str, ...] = tuple(label_key(n) for n in CHEXPERT_LABELS)


def report_relpath(subject_id: int, study_id: int) -> str:
    s = str(subject_id)
    return f"files/p{s[:2]}/p{s}/s{study_id}.txt"


def image_relpath(subject_id: int, study_id: int, dicom_id: str, ext: str = "dcm") -> str:
    s = str(subject_id)
    return f"files/p{s[:2]}/p{s}/s{study_id}/{dicom_id}.{ext}"


#: A MIMIC-CXR dicom_id: five dash-joined groups of hex digits (8 each in MIMIC-CXR). Ids
#: are used to build file paths, so anything else (a "../", a slash) is rejected.
DICOM_ID_RE = re.compile(r"^[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{8}){4}$")
#: MIMIC-CXR subject ids are 8 digits starting with 1; study ids 8 digits starting with 5.
SUBJECT_ID_RE = re.compile(r"^1\d{7}$")
STUDY_ID_RE = re.compile(r"^5\d{7}$")
#: An image path relative to the MIMIC-CXR(-JPG) root: files/pNN/pSSSSSSSS/sTTTTTTTT/<dicom_id>.ext
#: (NN: the subject id's first two digits).
IMAGE_RELPATH_RE = re.compile(
    r"^files/p1\d/p1\d{7}/s5\d{7}/[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{8}){4}\.(?:dcm|jpg)$"
)
#: A sha256 checksum as cxrctx writes it (lower-case hex).
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
