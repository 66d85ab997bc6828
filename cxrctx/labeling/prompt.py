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

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from cxrctx.errors import CxrctxError
from cxrctx.labeling.models import answer_schema
from cxrctx.llm.prompt import PromptFile, load_prompt_file
from cxrctx.llm.task import REPAIR_ECHO_CHARS, schema_sha256_of
from cxrctx.vocab import LESIONS, mentioned_lesions

DEFAULT_VERSION = 1
LABEL_PROMPT_KEYS = ("system", "user_template", "repair_template", "lesions")


def schema_sha256() -> str:
    """sha256 of `schemas/lesion_answer.schema.json` as `cxrctx schemas` writes it (verifiable
    with sha256sum); recorded in every label row."""
    return schema_sha256_of(answer_schema(LESIONS, required=False))


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class LabelPrompt(PromptFile):
    """A loaded prompt version; render messages and find candidates with it."""

    def __post_init__(self) -> None:
        lesions = self.data.get("lesions", {})
        missing = [n for n in LESIONS if n not in lesions]
        extra = [n for n in lesions if n not in LESIONS]
        if missing or extra:
            raise CxrctxError(
                f"{self.path}: lesions must be exactly the 14 CLALA-Net lesions (missing {missing}, unknown {extra})"
            )

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


def load_prompt(version_or_path: int | str | Path | None = None) -> LabelPrompt:
    """Load `prompts/label_lesions/v{N}.json` (default the current version) or a given file."""
    v = DEFAULT_VERSION if version_or_path is None else version_or_path
    f = load_prompt_file("label_lesions", v, required=LABEL_PROMPT_KEYS)
    return LabelPrompt(data=f.data, sha256=f.sha256, path=f.path)
