"""cxrctx: clinical-context chest X-ray report-generation datasets from MIMIC-CXR."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cxrctx")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+src"

from cxrctx.errors import CxrctxError

__all__ = ["CxrctxError", "__version__"]
