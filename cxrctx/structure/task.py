"""Report structuring as an LLM task: one report (FINDINGS, IMPRESSION) in, the SRRG
layout out (organ header → bullet sentences, impression → numbered items).

The answer is accepted only when the deterministic faithfulness check
(`cxrctx.structure.check`) passes; otherwise `parse` raises AnswerError with the check's
reason, so the shared runner sends ONE repair request carrying that reason and records a
failure row when the repair fails too. Batching, cache and failure rows are the runner's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from cxrctx.llm.base import ChatRequest
from cxrctx.llm.prompt import PromptFile, load_prompt_file
from cxrctx.llm.task import (
    REPAIR_ECHO_CHARS,
    AnswerError,
    Task,
    parse_json_object,
    schema_sha256_of,
    validation_reason,
)
from cxrctx.structure.check import LIST_MARKER, CheckResult, check_structured
from cxrctx.vocab import SRRG_ORGAN_KEYS, SRRG_ORGANS

#: The default prompt: v2 rewrites the rules' draft (a prompt whose user template has no
#: `{draft}`, like v1, structures from scratch).
DEFAULT_VERSION = 2
IMPRESSION_KEY = "Impression"


def _unmark(value: Any) -> Any:
    """A bullet without its own list marker ("- ", "2. "): the layout adds those."""
    return LIST_MARKER.sub("", value) if isinstance(value, str) else value


Bullet = Annotated[
    str,
    BeforeValidator(_unmark),
    StringConstraints(strip_whitespace=True, min_length=1, max_length=400),
]
Bullets = Annotated[list[Bullet], Field(max_length=40)]


def _organ(i: int) -> Any:
    return Field(alias=SRRG_ORGANS[i], description=f"Bullet sentences under '{SRRG_ORGANS[i]}'")


class StructuredAnswer(BaseModel):
    """The model's structured report: each organ header → its bullet sentences (copied
    from FINDINGS), `Impression` → the impression's items in order. Keys are the SRRG
    organ headers as written in the report."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    lungs_and_airways: Bullets = _organ(0)
    pleura: Bullets = _organ(1)
    cardiovascular: Bullets = _organ(2)
    hila_and_mediastinum: Bullets = _organ(3)
    tubes_catheters_and_support_devices: Bullets = _organ(4)
    musculoskeletal_and_chest_wall: Bullets = _organ(5)
    abdominal: Bullets = _organ(6)
    other: Bullets = _organ(7)
    impression: Bullets = Field(
        alias="Impression", description="The impression's sentences, in order"
    )

    def organs(self) -> dict[str, list[str]]:
        """Organ header → bullets, in SRRG order (empty organs included)."""
        return {o: list(getattr(self, SRRG_ORGAN_KEYS[o])) for o in SRRG_ORGANS}

    def findings_bullets(self) -> list[str]:
        return [b for bs in self.organs().values() for b in bs]

    def render_findings(self) -> str:
        """The SRRG findings text: each non-empty organ header, then its `- ` bullets."""
        blocks = [
            f"{o}:\n" + "\n".join(f"- {b}" for b in bs) for o, bs in self.organs().items() if bs
        ]
        return "\n\n".join(blocks)

    def render_impression(self) -> str:
        return "\n".join(f"{i}. {t}" for i, t in enumerate(self.impression, 1))

    def render_report(self) -> str:
        """The whole structured report: `FINDINGS:` then the organ blocks, `IMPRESSION:`
        then the numbered items (a section without content is left out)."""
        parts = [
            (t, b)
            for t, b in (
                ("FINDINGS", self.render_findings()),
                ("IMPRESSION", self.render_impression()),
            )
            if b
        ]
        return "\n\n".join(f"{t}:\n\n{b}" for t, b in parts)


@dataclass(frozen=True)
class StructureItem:
    """One report to structure. `id` is the study id as text; `role` says whether the
    study is a record or only a prior of one; `problem` means it cannot be asked; `draft`
    is the rules' checked answer (what a model rewrites, and the fallback when its
    rewrite fails), `draft_check` its check."""

    id: str
    findings: str
    impression: str
    role: str = "record"
    problem: str | None = None
    draft: StructuredAnswer | None = field(default=None, compare=False, repr=False)
    draft_check: CheckResult | None = field(default=None, compare=False, repr=False)

    @property
    def text_sha256(self) -> str:
        text = f"FINDINGS:\n{self.findings}\n\nIMPRESSION:\n{self.impression}"
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class StructurePrompt(PromptFile):
    """A loaded prompt version (`prompts/structure_report/vN.json`)."""

    def system(self) -> str:
        lines = list(self.data["system"])
        for ex in self.data.get("examples", []):
            user = self.user(ex["findings"], ex["impression"], ex.get("draft"))
            lines += [
                "",
                "Example report:",
                user,
                "Example answer:",
                json.dumps(ex["answer"], ensure_ascii=False),
            ]
        return "\n".join(lines)

    @property
    def rewrites(self) -> bool:
        """Whether this prompt shows the model the rules' draft to rewrite."""
        return "{draft}" in self.data["user_template"]

    def user(self, findings: str, impression: str, draft: dict[str, Any] | None = None) -> str:
        """The user message; `{draft}` (rewrite prompts) is the rules' answer as JSON."""
        return self.data["user_template"].format(
            findings=findings or "(none)",
            impression=impression or "(none)",
            draft=json.dumps(draft or {}, ensure_ascii=False),
        )

    def messages(self, item: StructureItem) -> list[dict[str, str]]:
        draft = item.draft.model_dump(by_alias=True) if item.draft is not None else None
        return [
            {"role": "system", "content": self.system()},
            {"role": "user", "content": self.user(item.findings, item.impression, draft)},
        ]

    def repair_note(self, reason: str) -> str:
        return self.data["repair_template"].format(reason=reason)


@lru_cache(maxsize=8)
def load_structure_prompt(version: int | str | None = None) -> StructurePrompt:
    """A packaged prompt version (1, "v1") or a prompt JSON file path."""
    v = DEFAULT_VERSION if version is None else version
    f = load_prompt_file(
        "structure_report", v, required=("system", "user_template", "repair_template")
    )
    return StructurePrompt(f.data, f.sha256, f.path)


def check_answer(item: StructureItem, answer: StructuredAnswer) -> CheckResult:
    return check_structured(
        item.findings,
        item.impression,
        answer.findings_bullets(),
        answer.impression,
        organs=answer.organs(),
    )


class StructureTask(Task[StructureItem, StructuredAnswer]):
    """FINDINGS → organ bullets, IMPRESSION → items; accepted only when faithful."""

    name = "structure-report"
    answer_model = StructuredAnswer

    def __init__(self, prompt: StructurePrompt):
        self.prompt = prompt
        self.prompt_sha256 = prompt.sha256

    @property
    def schema_sha256(self) -> str:
        """sha256 of `schemas/structured_answer.schema.json` (verifiable with sha256sum)."""
        return schema_sha256_of(StructuredAnswer.model_json_schema())

    def local_answer(self, item: StructureItem) -> StructuredAnswer | None:
        if item.problem is not None:
            raise AnswerError(item.problem)
        return None

    def request(self, item: StructureItem) -> ChatRequest:
        return ChatRequest(
            messages=self.prompt.messages(item), json_schema=self.request_schema(item)
        )

    def parse(
        self, item: StructureItem, text: str, finish_reason: str = "stop"
    ) -> StructuredAnswer:
        try:
            obj = parse_json_object(text, finish_reason)
        except AnswerError as e:
            code = "truncated" if finish_reason == "length" else "invalid_json"
            raise AnswerError(f"{code}: {e.reason}") from e
        try:
            answer = StructuredAnswer.model_validate(obj)
        except ValidationError as e:
            raise AnswerError(f"schema_mismatch: {validation_reason(e)}") from e
        result = check_answer(item, answer)
        if not result.passed:
            raise AnswerError(result.reason)
        return answer

    def repair(
        self, item: StructureItem, request: ChatRequest, text: str, reason: str
    ) -> ChatRequest | None:
        messages = [
            *request.messages,
            {"role": "assistant", "content": text[:REPAIR_ECHO_CHARS]},
            {"role": "user", "content": self.prompt.repair_note(reason)},
        ]
        return ChatRequest(messages=messages, json_schema=request.json_schema, key=request.key)


def reason_code(reason: str | None) -> str:
    """The code of a failure reason ("dropped_sentence: ... (after repair; first: ...)")."""
    head = (reason or "failed").split(":", 1)[0].strip().lower().replace(" ", "_")
    return head if head.isidentifier() else "other"
