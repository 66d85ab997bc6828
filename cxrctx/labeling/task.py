"""The lesion labeler as an LLM task: one report (its candidates) in, a LabelAnswer out.

Batching, caching, the repair retry and failure rows are the runner's
(`cxrctx.llm.runner.run_task`); this module only says how to ask and how to read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cxrctx.labeling.models import LabelAnswer, answer_schema
from cxrctx.labeling.parse import parse_lesion_answer, validate_lesion_answer
from cxrctx.labeling.prompt import LabelPrompt, schema_sha256
from cxrctx.llm.base import ChatRequest
from cxrctx.llm.task import AnswerError, Task


@dataclass(frozen=True)
class LabelItem:
    """One input document. `problem` (empty text, duplicate id) means it cannot be asked."""

    id: str
    text: str
    text_sha256: str
    candidates: tuple[str, ...]
    problem: str | None = None


class LesionTask(Task[LabelItem, LabelAnswer]):
    """Status, location and reasoning of each candidate lesion of one report."""

    name = "label-lesions"
    answer_model = LabelAnswer

    def __init__(self, prompt: LabelPrompt):
        self.prompt = prompt
        self.prompt_sha256 = prompt.sha256

    @property
    def schema_sha256(self) -> str:
        return schema_sha256()

    def local_answer(self, item: LabelItem) -> LabelAnswer | None:
        if item.problem is not None:
            raise AnswerError(item.problem)
        if not item.candidates:  # the report mentions none of the 14: no model call
            return LabelAnswer({})
        return None

    def request(self, item: LabelItem) -> ChatRequest:
        return ChatRequest(
            messages=self.prompt.messages(item.text, list(item.candidates)),
            json_schema=answer_schema(item.candidates),
        )

    def parse(self, item: LabelItem, text: str, finish_reason: str = "stop") -> LabelAnswer:
        return parse_lesion_answer(text, item.candidates, finish_reason)

    def repair(
        self, item: LabelItem, request: ChatRequest, text: str, reason: str
    ) -> ChatRequest | None:
        msgs = self.prompt.repair_messages(request.messages, text, reason, list(item.candidates))
        return ChatRequest(messages=msgs, json_schema=request.json_schema, key=request.key)

    def load_answer(self, item: LabelItem, data: Any) -> LabelAnswer:
        try:
            return validate_lesion_answer(data, item.candidates)
        except AnswerError as e:
            raise ValueError(e.reason) from e
