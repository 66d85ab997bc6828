"""The generator's contracts: the summary it returns and one row of its study truth."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pydantic import BaseModel, Field

METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv.gz"
SPLIT_CSV = "mimic-cxr-2.0.0-split.csv.gz"
CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv.gz"
NEGBIO_CSV = "mimic-cxr-2.0.0-negbio.csv.gz"
REPORTS_ZIP = "mimic-cxr-reports.zip"


class SynthSummary(BaseModel):
    """What `synthesize` wrote. Paths are relative to `out_dir`."""

    out_dir: str
    seed: int
    patients: int
    studies: int
    images: int
    report_files: int
    dicom_files: int
    image_files: dict[str, int] = Field(
        default_factory=dict, description="Counts returned by cxrctx.synth.images.add_images"
    )
    files_written: int
    metadata_csv: str = METADATA_CSV
    split_csv: str = SPLIT_CSV
    chexpert_csv: str = CHEXPERT_CSV
    negbio_csv: str = NEGBIO_CSV
    reports_zip: str | None = None
    truth_labels: str = "truth/labels"
    truth_studies: str = "truth/studies.parquet"
    varieties: dict[str, int] = Field(
        default_factory=dict, description="How many studies/images/patients got each rare case"
    )

    def path(self, name: str) -> Path:
        """Absolute path of one of the relative path fields, e.g. ``summary.path('truth_studies')``."""
        return Path(self.out_dir) / getattr(self, name)


class TruthStudy(BaseModel):
    """One row of ``truth/studies.parquet`` (what a correct build-priors must find)."""

    subject_id: int
    study_id: int
    split: str
    report_path: str
    study_date: dt.date
    study_datetime: dt.datetime | None = Field(
        description="Earliest image date+time; None when StudyTime is blank"
    )
    study_time_missing: bool
    n_images: int
    n_prior_studies: int = Field(
        description="Studies of the patient strictly earlier (ties at the same datetime are not priors)"
    )
    is_first_study: bool
    same_time_ambiguous: bool = Field(
        description="Another study of the patient has the very same datetime"
    )
    same_day_unordered: bool = Field(
        description="Another study on the same date where either lacks a time"
    )
    multi_time_images: bool = Field(description="Images of the study carry different StudyTimes")
    has_temporal_reference: bool = Field(
        description="Findings/impression speak of an earlier study"
    )
    temporal_reference_without_prior: bool
    style: str = Field(description="full / impression_only / findings_only / neither / combined")
    has_addendum: bool
    has_wet_read: bool
    has_notification: bool
    has_recommendation: bool
    header_examination: str | None
    header_indication: str | None
    header_history: str | None
    header_technique: str | None
    header_comparison: str | None
    header_findings: str | None
    header_impression: str | None
    empty_sections: list[str] = Field(
        description="Canonical sections whose header is present with no text"
    )
    expect_examination: bool
    expect_indication: bool
    expect_history: bool
    expect_technique: bool
    expect_comparison: bool
    expect_findings: bool
    expect_impression: bool
    examination: str | None = Field(description="Expected section text, whitespace-normalised")
    indication: str | None
    history: str | None
    technique: str | None
    comparison: str | None
    findings: str | None = Field(description="For FINDINGS AND IMPRESSION the text is in both")
    impression: str | None
    reason_for_exam: str | None = Field(description="Text after '//' in the indication")
