"""Release metadata, checked the way the Hugging Face Hub checks it.

`ReleaseConfig` is what `release` was asked to make; `CardMetadata` is what its dataset
cards say beyond the data (licence name/link, task and size categories, citation, the
gated-access notice of the credentialed card). Both are recorded in the manifests, so the
cards are a pure function of the manifest: a rebuild reproduces them byte for byte and
nobody edits README.md by hand.

The rules are the hub's: a dataset name is a repo id (`[namespace/]name`, letters, digits,
`-`, `_`, `.`; no `--` or `..`; at most 96 characters; not starting or ending with `-` or
`.`); `license` is one of the hub's licence ids (lower-case SPDX identifiers plus a few hub
ones), or `other` together with `license_name` and `license_link`; `version` is a semantic
version (semver.org); `task_categories` and `size_categories` take the hub's values.
Card metadata comes from options or a small YAML/TOML file (`--card FILE`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cxrctx.errors import CxrctxError

Format = Literal["srrg", "maira2", "jsonl"]
Target = Literal["findings", "impression", "findings+impression"]

#: The hub's repo-id rule (huggingface_hub.utils.validate_repo_id).
REPO_ID_RE = re.compile(r"^(?:[\w\-.]+/)?[\w\-.]{1,96}$")
#: semver.org 2.0.0, the official regular expression.
SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)

#: Licence ids the hub accepts in a card's `license:` (lower-case SPDX ids and hub ids).
HUB_LICENSES: tuple[str, ...] = (
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m",
    "bigscience-bloom-rail-1.0", "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0",
    "bsd", "bsd-2-clause", "bsd-3-clause", "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0",
    "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0",
    "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-3.0",
    "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0",
    "cdla-sharing-1.0", "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0",
    "epl-1.0", "epl-2.0", "etalab-2.0", "eupl-1.1", "eupl-1.2", "agpl-3.0", "gfdl", "gpl",
    "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "isc", "h-research",
    "intel-research", "lppl-1.3c", "ms-pl", "apple-ascl", "apple-amlr", "mpl-2.0", "odc-by",
    "odbl", "openrail++", "osl-3.0", "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib",
    "pddl", "lgpl-lr", "deepfloyd-if-license", "fair-noncommercial-research-license",
    "llama2", "llama3", "llama3.1", "llama3.2", "llama3.3", "llama4", "gemma", "unknown",
    "other",
)  # fmt: skip
#: The hub's dataset task categories.
TASK_CATEGORIES: tuple[str, ...] = (
    "text-classification", "token-classification", "table-question-answering",
    "question-answering", "zero-shot-classification", "translation", "summarization",
    "feature-extraction", "text-generation", "fill-mask", "sentence-similarity",
    "text-to-speech", "text-to-audio", "automatic-speech-recognition", "audio-to-audio",
    "audio-classification", "voice-activity-detection", "depth-estimation",
    "image-classification", "object-detection", "image-segmentation", "text-to-image",
    "image-to-text", "image-to-image", "image-to-video", "unconditional-image-generation",
    "video-classification", "reinforcement-learning", "robotics", "tabular-classification",
    "tabular-regression", "tabular-to-text", "table-to-text", "multiple-choice", "text-ranking",
    "text-retrieval", "time-series-forecasting", "text-to-video", "image-text-to-text",
    "visual-question-answering", "document-question-answering",
    "zero-shot-image-classification", "graph-ml", "mask-generation",
    "zero-shot-object-detection", "text-to-3d", "image-to-3d", "image-feature-extraction",
    "video-text-to-text", "keypoint-detection", "visual-document-retrieval", "any-to-any",
    "other",
)  # fmt: skip
#: The hub's size categories (number of examples), smallest first, with their upper bound.
SIZE_CATEGORIES: tuple[tuple[str, float], ...] = (
    ("n<1K", 1e3), ("1K<n<10K", 1e4), ("10K<n<100K", 1e5), ("100K<n<1M", 1e6),
    ("1M<n<10M", 1e7), ("10M<n<100M", 1e8), ("100M<n<1B", 1e9), ("1B<n<10B", 1e10),
    ("10B<n<100B", 1e11), ("100B<n<1T", 1e12), ("n>1T", float("inf")),
)  # fmt: skip
PHYSIONET_LICENSE = (
    "PhysioNet Credentialed Health Data License 1.5.0",
    "https://physionet.org/content/mimic-cxr/view-license/2.0.0/",
)
DEFAULT_TASKS = ["image-text-to-text", "image-to-text"]
DEFAULT_GATED_PROMPT = (
    "This dataset holds text derived from MIMIC-CXR. Access requires your own PhysioNet "
    "credentialed access to MIMIC-CXR (CITI data-privacy training, signed Data Use Agreement "
    "of the PhysioNet Credentialed Health Data License 1.5.0). By requesting access you "
    "confirm that you hold it and will not share the data or send it to third-party services."
)


def size_category(n: int) -> str:
    """The hub size category of `n` examples."""
    return next(name for name, upper in SIZE_CATEGORIES if n < upper)


def repo_id_problem(name: str) -> str | None:
    """Why `name` is not a hub repo id, or None."""
    if not REPO_ID_RE.match(name):
        return "letters, digits, '-', '_', '.' only, optionally one 'namespace/' prefix, ≤ 96"
    if "--" in name or ".." in name:
        return "'--' and '..' are forbidden"
    for part in name.split("/"):
        if part.startswith(("-", ".")) or part.endswith(("-", ".")):
            return "a part may not start or end with '-' or '.'"
    return None


class CardMetadata(BaseModel):
    """What the dataset cards say beyond the data (hub card field names)."""

    model_config = ConfigDict(extra="forbid")

    license_name: str | None = Field(
        None, description="Name of the licence when `license` is `other` (hub: license_name)"
    )
    license_link: str | None = Field(
        None, description="URL of the licence text when `license` is `other` (hub: license_link)"
    )
    task_categories: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TASKS), description="Hub task categories"
    )
    size_categories: list[str] | None = Field(
        None, description="Hub size category; default: from the number of studies"
    )
    citation: str | None = Field(None, description="BibTeX (or plain) citation of the release")
    homepage: str | None = Field(None, description="Project page of the release")
    gated_prompt: str = Field(
        DEFAULT_GATED_PROMPT,
        description="Gated-access notice of the credentialed card (hub: extra_gated_prompt)",
    )

    @field_validator("task_categories")
    @classmethod
    def _tasks(cls, v: list[str]) -> list[str]:
        bad = [t for t in v if t not in TASK_CATEGORIES]
        if bad:
            raise ValueError(f"task_categories {bad} are not hub task categories")
        return v

    @field_validator("size_categories")
    @classmethod
    def _sizes(cls, v: list[str] | None) -> list[str] | None:
        names = [n for n, _ in SIZE_CATEGORIES]
        if v is not None and any(s not in names for s in v):
            raise ValueError(f"size_categories {v} not among {', '.join(names)}")
        return v

    @field_validator("license_link", "homepage")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://\S+$", v):
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v


class ReleaseConfig(BaseModel):
    """What a release was asked to be (stored in both bundles' manifests)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Dataset name, a hub repo id, e.g. my-org/mimic-cxr-context")
    version: str = Field(description="Release version, a semantic version, e.g. 1.0.0")
    license: str = Field("other", description="Hub licence id (lower-case SPDX id) or other")
    target: Target = Field("findings", description="Report section(s) the exports use as target")
    formats: list[Format] = Field(default_factory=list, description="Extra export tables")
    rows_per_file: int = Field(20_000, ge=1)
    stages: list[str] = Field(default_factory=list, description="Input stages, in order")
    card: CardMetadata = Field(default_factory=CardMetadata, description="Card metadata")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        why = repo_id_problem(v)
        if why:
            raise ValueError(f"--name {v!r} is not a hub repo id ({why})")
        return v

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not SEMVER_RE.match(v):
            raise ValueError(f"--version {v!r} is not a semantic version (MAJOR.MINOR.PATCH)")
        return v

    @field_validator("license")
    @classmethod
    def _license(cls, v: str) -> str:
        if v.lower() not in HUB_LICENSES:
            raise ValueError(
                f"--license {v!r} is not a hub licence id (a lower-case SPDX id such as "
                "cc-by-4.0, or other with license_name and license_link)"
            )
        return v.lower()

    @model_validator(mode="after")
    def _other(self) -> ReleaseConfig:
        """`other` needs license_name + license_link (the hub's rule); with neither given,
        the source data's licence is meant (PhysioNet Credentialed Health Data 1.5.0)."""
        c = self.card
        if self.license != "other":
            if c.license_name or c.license_link:
                raise ValueError("license_name / license_link go with --license other only")
            return self
        if not c.license_name and not c.license_link:
            c.license_name, c.license_link = PHYSIONET_LICENSE
        elif not (c.license_name and c.license_link):
            raise ValueError("--license other needs both license_name and license_link")
        return self


def read_card_file(path: str | os.PathLike) -> dict[str, Any]:
    """Card metadata from a small TOML or YAML file (a mapping of CardMetadata fields)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CxrctxError(f"{p}: cannot read the card metadata ({e})") from e
    try:
        if p.suffix == ".toml":
            data: Any = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # tomllib/yaml raise their own error types
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CxrctxError(f"{p}: not valid {p.suffix.lstrip('.') or 'YAML'} ({first})") from e
    if not isinstance(data, dict):
        raise CxrctxError(f"{p}: card metadata must be a mapping of field: value")
    return data
