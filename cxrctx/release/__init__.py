"""Dataset releases: `make_release`, `validate`, `rebuild`, `info` and the export formats.

A release folder holds `public/` (identifiers, splits, flags, section-presence booleans,
label enums, checksums: shareable) and `credentialed/` (full records and labels: PhysioNet
licence), each with a Hugging Face dataset card, `croissant.json` and a manifest.
"""

from cxrctx.release.info import Info, info, split_summary
from cxrctx.release.rebuild import RebuildReport, rebuild
from cxrctx.release.release import ReleaseConfig, ReleaseResult, make_release
from cxrctx.release.validate import ValidationReport, validate

__all__ = [
    "Info",
    "RebuildReport",
    "ReleaseConfig",
    "ReleaseResult",
    "ValidationReport",
    "info",
    "make_release",
    "rebuild",
    "split_summary",
    "validate",
]
