"""The versioned lesion-labeling prompt (`prompts/label_lesions/vN.json`) and its pre-pass.

The prompt file is data: instructions, the 14 lesions with typical positive / negative
expressions and worked examples. The candidate pre-pass is the shared clinical lexicon
(`cxrctx.vocab.mentioned_lesions`, the same vocabulary as the rules labeler): a lesion is
a *candidate* when the report expresses it at all (affirmed, hedged or negated); the model
then decides status and location of every candidate. Reports with no candidate are
all-negative without a model call. (The per-lesion `patterns` of prompt v1 are kept in
the file, whose sha256 the v1 rows record, but no longer read.)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from cxrctx.errors import CxrctxError
from cxrctx.labeling.models import answer_schema
from cxrctx.llm.task import REPAIR_ECHO_CHARS, schema_sha256_of
from cxrctx.resources import read_bytes
from cxrctx.vocab import LESIONS, mentioned_lesions

DEFAULT_VERSION = 1


class Prompt(Protocol):
    """What a run records of the prompt it asked with (`LabelPrompt`, `HybridPrompt`)."""

    @property
    def version(self) -> int: ...

    @property
    def sha256(self) -> str: ...


def schema_sha256() -> str:
    """sha256 of `schemas/lesion_answer.schema.json` as `cxrctx schemas` writes it (verifiable
    with sha256sum); recorded in every label row."""
    return schema_sha256_of(answer_schema(LESIONS, required=False))


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


@dataclass
class LabelPrompt:
    """A loaded prompt version; render messages and find candidates with it."""

    data: dict[str, Any]
    sha256: str
    path: str

    def __post_init__(self) -> None:
        lesions = self.data.get("lesions", {})
        missing = [n for n in LESIONS if n not in lesions]
        extra = [n for n in lesions if n not in LESIONS]
        if missing or extra:
            raise CxrctxError(
                f"{self.path}: lesions must be exactly the 14 CLALA-Net lesions (missing {missing}, unknown {extra})"
            )

    @property
    def version(self) -> int:
        return int(self.data.get("version", 0))

    def candidates(self, text: str) -> list[str]:
        """Lesions the shared lexicon finds expressed in `text`, in the fixed lesion order."""
        return mentioned_lesions(text)

    @cached_property
    def system(self) -> str:
        """The fixed system message (identical for every report, so engines cache its prefix)."""
        lines = list(self.data["system"])
        for name in LESIONS:
            d = self.data["lesions"][name]
            pos = "; ".join(f'"{x}"' for x in d["positive"])
            neg = "; ".join(f'"{x}"' for x in d["negative"])
            lines.append(f"- {name}: {d['definition']}. Positive: {pos}. Negative: {neg}.")
        for i, ex in enumerate(self.data.get("examples", []), 1):
            cands = ", ".join(ex["answer"].keys())
            lines.append(
                f"\nExample {i}.\nREPORT:\n{ex['text']}\n\nCANDIDATES: {cands}\nANSWER: {_canonical_pretty(ex['answer'])}"
            )
        return "\n".join(lines)

    def messages(self, text: str, candidates: list[str]) -> list[dict[str, str]]:
        user = self.data["user_template"].format(text=text, candidates=", ".join(candidates))
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]

    def repair_messages(
        self, messages: list[dict[str, str]], raw: str, reason: str, candidates: list[str]
    ) -> list[dict[str, str]]:
        note = self.data["repair_template"].format(reason=reason, candidates=", ".join(candidates))
        return [
            *messages,
            {"role": "assistant", "content": raw[:REPAIR_ECHO_CHARS]},
            {"role": "user", "content": note},
        ]


def _canonical_pretty(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def read_prompt_file(version_or_path: int | str | Path, stem: str) -> tuple[str, bytes, dict]:
    """(recorded path, raw bytes, parsed JSON) of `prompts/label_lesions/{stem}{N}.json` for
    a version number, or of a given file; an unreadable or invalid file is a one-line error."""
    if isinstance(version_or_path, int) or (
        isinstance(version_or_path, str) and version_or_path.isdigit()
    ):
        name = f"{stem}{int(version_or_path)}.json"
        path = f"prompts/label_lesions/{name}"  # recorded as a package-relative name
        raw = read_bytes("prompts", "label_lesions", name)
    else:
        path = str(version_or_path)
        try:
            raw = Path(version_or_path).read_bytes()
        except OSError as e:
            raise CxrctxError(f"{path}: cannot read prompt file ({e.strerror})") from e
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CxrctxError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e
    return path, raw, data


def load_prompt(version_or_path: int | str | Path | None = None) -> LabelPrompt:
    """Load `prompts/label_lesions/v{N}.json` (default the current version) or a given file."""
    v = DEFAULT_VERSION if version_or_path is None else version_or_path
    path, raw, data = read_prompt_file(v, "v")
    for key in ("system", "user_template", "repair_template", "lesions"):
        if key not in data:
            raise CxrctxError(f"{path}: prompt file lacks {key!r}")
    return LabelPrompt(data=data, sha256=hashlib.sha256(raw).hexdigest(), path=str(path))
