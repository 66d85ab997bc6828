"""Package data: the versioned prompts and the generated JSON Schemas.

`prompts/` and `schemas/` sit at the top of the repository; the wheel carries them inside
the package as `cxrctx/_data/prompts` and `cxrctx/_data/schemas` (see pyproject's
force-include), so a plain `pip install .` works. They are read with `importlib.resources`;
only a source checkout (editable install, or running from the repo) falls back to the
top-level folders.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Literal

from cxrctx.errors import CxrctxError

Kind = Literal["prompts", "schemas"]


def data_root(kind: Kind) -> Traversable:
    """The folder of package data `kind` (installed copy first, then the source tree)."""
    packaged = resources.files("cxrctx").joinpath("_data", kind)
    if packaged.is_dir():
        return packaged
    source = Path(__file__).resolve().parent.parent / kind
    if source.is_dir():
        return source
    raise CxrctxError(f"package data {kind}/ is missing from this cxrctx install (reinstall it)")


def data_file(kind: Kind, *parts: str) -> Traversable:
    """One file of package data, e.g. ``data_file("prompts", "label_lesions", "v1.json")``."""
    return data_root(kind).joinpath(*parts)


def read_bytes(kind: Kind, *parts: str) -> bytes:
    """Bytes of one package-data file (hashes are taken over these); a one-line error
    names the file when it does not exist."""
    f = data_file(kind, *parts)
    if not f.is_file():
        raise CxrctxError(f"{kind}/{'/'.join(parts)}: no such file in this cxrctx install")
    return f.read_bytes()


def source_dir(kind: Kind) -> Path | None:
    """The writable top-level folder of a source checkout, or None when installed."""
    root = data_root(kind)
    return root if isinstance(root, Path) else None
