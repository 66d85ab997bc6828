"""The deterministic aggregator: ROI statements merged into one report without an LLM.

Positive sentences come first (ROI order), then negative ones; duplicates are removed; a
negative sentence is dropped when a positive one names the same lesion (the CLALA-Net
paper's "prefer positive findings" rule) or when a broader negative sentence already rules
out all its lesions. Which sentences are negative and which lesions they name come from the
shared vocabulary (`cxrctx.vocab.is_negative`, `mentioned_lesions`, `split_sentences`).
"""

from __future__ import annotations

import re

from cxrctx.vocab import is_negative, mentioned_lesions, split_sentences


def report_sentences(text: str) -> list[str]:
    """Whitespace-normalised sentences of a generated text (the shared sentence splitter)."""
    flat = " ".join(text.split())
    return [flat[a:b] for a, b in split_sentences(flat)]


def _lesions(sentence: str) -> set[str]:
    return set(mentioned_lesions(sentence))


def _unique_sentences(roi_texts: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """(positive, negative) sentences in ROI order, each normalised spelling kept once."""
    seen: set[str] = set()
    pos: list[str] = []
    neg: list[str] = []
    for _, text in roi_texts:
        for s in report_sentences(text):
            key = re.sub(r"[^a-z0-9 ]", "", s.lower()).strip()
            if not key or key in seen:
                continue
            seen.add(key)
            (neg if is_negative(s) else pos).append(s)
    return pos, neg


def _drop_covered(neg: list[str]) -> list[str]:
    """Negative sentences minus those whose lesions a broader kept negative already rules out."""
    covered: set[str] = set()
    keep: set[int] = set()
    lesions = [_lesions(s) for s in neg]
    for i in sorted(range(len(neg)), key=lambda i: -len(lesions[i])):
        les = lesions[i]
        if les and les <= covered:
            continue
        covered |= les
        keep.add(i)
    return [s for i, s in enumerate(neg) if i in keep]


def merge_sentences(roi_texts: list[tuple[str, str]]) -> str:
    """Deterministic aggregator: positives first, dedupe, positive wins over negative per lesion."""
    pos, neg = _unique_sentences(roi_texts)
    positive_lesions = set().union(*(_lesions(s) for s in pos)) if pos else set()
    neg = [s for s in neg if not (_lesions(s) & positive_lesions)]
    return " ".join(pos + _drop_covered(neg))
