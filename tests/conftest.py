"""Shared fixtures: synthetic MIMIC-CXR roots written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~40 patients (seed 7) with reports, CSVs, truth, tiny DICOMs and mimic-cxr-reports.zip."""
    from cxrctx.synth import synthesize

    root = tmp_path_factory.mktemp("synth") / "mimic"
    synthesize(root, patients=40, seed=7, dicom=True, zip_reports=True)
    return root


@pytest.fixture(scope="session")
def synth_root_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~8 patients (seed 11), reports + CSVs + truth only."""
    from cxrctx.synth import synthesize

    root = tmp_path_factory.mktemp("synth_small") / "mimic"
    synthesize(root, patients=8, seed=11)
    return root


@pytest.fixture(autouse=True)
def _release_output_locks():
    """Each test's stage runs lock their output folders for this process (as a CLI run
    does until it exits); hand them back after the test so descriptors do not pile up."""
    yield
    from cxrctx.locks import release_all

    release_all()
