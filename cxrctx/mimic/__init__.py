"""MIMIC-CXR input: layout discovery, report sectioning, DICOM header scan, prior join.

Kept import-light on purpose: worker processes import `cxrctx.mimic.sections` and must
not pay for polars. `build_priors` is resolved lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # typed for checkers, still imported lazily at run time
    from cxrctx.mimic.build import BuildPriorsConfig, BuildResult, build_priors

__all__ = ["BuildPriorsConfig", "BuildResult", "build_priors"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from cxrctx.mimic import build

        return getattr(build, name)
    raise AttributeError(name)
