"""The rules structurer: the embedded default of structure-reports (no model needed).

Every FINDINGS sentence becomes a bullet, copied verbatim, under the organ header that the
shared organ vocabulary (`cxrctx.vocab.organs`) reads from it (a sentence naming no organ
goes under `Other`); every IMPRESSION sentence becomes an item of the numbered list.

A sentence naming two or more organs is **split at its clause boundaries** when that
separates the organs: the boundaries are the shared lexicon's scope terminators (";",
", with", "but", "and the", "however", "which", "there is" ...), the same points where the
rules labeler stops a negation's scope, so a negation never loses its finding. A clause
naming no organ stays with the clause before it, and adjacent clauses naming the same
organs are joined. A split is kept only when its parts pass the faithfulness check against
the sentence alone; otherwise, and for a clause that itself names several organs, the text
is **placed under each organ it names** (the same bullet under each header).

The draft is then checked like any answer. Should a report with splits fail the check, it
is drafted again with every multi-organ sentence placed whole under each of its organs;
verbatim sentences pass the check, so the rules answer is faithful by construction.
"""

from __future__ import annotations

from typing import Any

from cxrctx.structure.check import LIST_MARKER, CheckResult, check_structured, sentences
from cxrctx.structure.task import StructuredAnswer
from cxrctx.vocab import SRRG_ORGAN_KEYS, SRRG_ORGANS, organ_of, split_clauses

#: Bump when the placement or splitting rules change (part of the run's config hash).
RULES_VERSION = 1


def _bullet(text: str) -> str:
    """A clause as a bullet sentence: list marker and trailing ",;:" gone, first letter
    upper case, a full stop at the end."""
    t = LIST_MARKER.sub("", text).strip().rstrip(",;:").strip()
    if not t:
        return ""
    t = t[0].upper() + t[1:]
    return t if t[-1] in ".!?" else t + "."


def _groups(sentence: str) -> list[tuple[str, tuple[str, ...]]]:
    """Clause groups of a sentence (text, organs): clauses split at the lexicon's scope
    terminators, an organless clause joined to the one before it (or after it, first),
    neighbours naming the same organs joined."""
    groups: list[list] = []  # [start, end, organs]
    for a, b in split_clauses(sentence):
        organs = organ_of(sentence[a:b])
        if groups and (organs == ("Other",) or organs == groups[-1][2]):
            groups[-1][1] = b
        elif groups and groups[-1][2] == ("Other",):
            groups[-1][1], groups[-1][2] = b, organs
        else:
            groups.append([a, b, organs])
    return [(sentence[a:b], organs) for a, b, organs in groups]


def _split(sentence: str) -> list[tuple[str, tuple[str, ...]]] | None:
    """The sentence's clause groups as bullets, or None when splitting does not separate
    its organs or the parts fail the check against the sentence alone."""
    groups = [(_bullet(t), o) for t, o in _groups(sentence)]
    groups = [(t, o) for t, o in groups if t]
    if len(groups) < 2:
        return None
    if not check_structured(sentence, None, [t for t, _ in groups], []).passed:
        return None
    return groups


def _place(sentence: str, split: bool, organs: dict[str, list[str]]) -> None:
    """Put one FINDINGS sentence under its organ(s)."""
    named = organ_of(sentence)
    parts = _split(sentence) if split and len(named) > 1 else None
    for text, where in parts or [(sentence.strip(), named)]:
        for organ in where:
            organs[organ].append(text)


def draft(findings: str | None, impression: str | None, *, split: bool = True) -> StructuredAnswer:
    """The rules' structured answer (not yet checked). Built without pydantic validation:
    the answer schema's length limits bound an LLM's output, not a copied report."""
    organs: dict[str, list[str]] = {o: [] for o in SRRG_ORGANS}
    for s in sentences(findings):
        if LIST_MARKER.sub("", s).strip():
            _place(s, split, organs)
    items = [t for t in (_bullet(s) if LIST_MARKER.match(s) else s.strip()
                         for s in sentences(impression)) if t]  # fmt: skip
    fields: dict[str, Any] = {SRRG_ORGAN_KEYS[o]: organs[o] for o in SRRG_ORGANS}
    return StructuredAnswer.model_construct(None, **fields, impression=items)


def structure_by_rules(
    findings: str | None, impression: str | None
) -> tuple[StructuredAnswer, CheckResult]:
    """The checked rules answer: clause splits first; when that fails the check, every
    multi-organ sentence whole under each of its organs."""
    answer = draft(findings, impression)
    result = _check(findings, impression, answer)
    if result.passed:
        return answer, result
    whole = draft(findings, impression, split=False)
    if whole.organs() == answer.organs():
        return answer, result
    return whole, _check(findings, impression, whole)


def _check(findings: str | None, impression: str | None, answer: StructuredAnswer) -> CheckResult:
    return check_structured(findings, impression, answer.findings_bullets(), answer.impression,
                            organs=answer.organs())  # fmt: skip


__all__ = ["RULES_VERSION", "draft", "structure_by_rules"]
