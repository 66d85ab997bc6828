"""Prompts are versioned data: one file per version under `prompts/<family>/`.

Every prompt family (label_lesions, its hybrid variant, structure_report, aggregate_report,
consistency_judge) is read by `load_prompt_file` into a `PromptFile`: the parsed JSON, the
sha256 of the file's bytes (recorded with every answer) and where it came from. A family's
class subclasses `PromptFile` to add how it renders messages.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrctx.errors import CxrctxError
from cxrctx.resources import read_bytes

_VERSION_RE = re.compile(r"^v?(\d+)$")


@dataclass(frozen=True)
class PromptFile:
    """One loaded prompt version: its data, the sha256 of its bytes, its path (packaged
    files as `prompts/<family>/<name>`)."""

    data: dict[str, Any]
    sha256: str
    path: str

    @property
    def version(self) -> int:
        return int(self.data.get("version", 0))


def read_prompt_file(
    family: str, version_or_path: int | str | Path, stem: str = "v"
) -> tuple[str, bytes, dict[str, Any]]:
    """(recorded path, raw bytes, parsed JSON) of `prompts/{family}/{stem}{N}.json` for a
    version (N, "N" or "vN"), or of a given file; an unreadable or invalid file is a
    one-line error."""
    m = _VERSION_RE.match(str(version_or_path)) if not isinstance(version_or_path, Path) else None
    if m is not None:
        name = f"{stem}{int(m.group(1))}.json"
        path = f"prompts/{family}/{name}"  # recorded as a package-relative name
        raw = read_bytes("prompts", family, name)
    else:
        path = str(version_or_path)
        try:
            raw = Path(path).read_bytes()
        except OSError as e:
            raise CxrctxError(f"{path}: cannot read prompt file ({e.strerror or e})") from e
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CxrctxError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e
    if not isinstance(data, dict):
        raise CxrctxError(f"{path}: a prompt file holds a JSON object")
    return path, raw, data


def load_prompt_file(
    family: str,
    version_or_path: int | str | Path,
    *,
    stem: str = "v",
    required: Sequence[str] = (),
) -> PromptFile:
    """A prompt version of `family` (or a given file), checked for the `required` keys."""
    path, raw, data = read_prompt_file(family, version_or_path, stem)
    missing = [k for k in required if k not in data]
    if missing:
        raise CxrctxError(f"{path}: {family} prompt lacks {', '.join(repr(k) for k in missing)}")
    return PromptFile(data=data, sha256=hashlib.sha256(raw).hexdigest(), path=path)
