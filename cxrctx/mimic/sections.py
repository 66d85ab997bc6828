"""Split a MIMIC-CXR free-text report into the canonical sections of the record contract.

Facts about the format: an optional addendum block comes first, separated
from the final report by a line of underscores; the report has a centred title
('FINAL REPORT'), upper-case headers ending in ':' at the start of a line, body lines
wrapped at 79 columns with one leading space, and `___` for removed PHI (kept as is).

Choices (documented in the README):
- Synonyms and misspellings map to the canonical names (a table plus an edit-distance
  fallback for unseen typos of the canonical names).
- 'FINDINGS AND IMPRESSION' (and 'FINDINGS/IMPRESSION', 'IMPRESSION AND FINDINGS') gives
  its text to *both* findings and impression, unless the report also has an explicit
  section of that name, which then wins.
- Addenda (blocks split off by an underscore line, or an 'ADDENDUM:' section) go to
  `addendum`, never into the body sections. WET READ sections are preliminary reads
  and are ignored. NOTIFICATION / RECOMMENDATION / COMMENT sections are not canonical
  and are dropped.
- An upper-case 'WORD:' at a line start that is not a known header (e.g. 'NOTE:') is
  part of the current section's text, not a new section, so no body text is lost.
- Whitespace is normalised: the 79-column lines are unwrapped into single spaces.
- Examination, indication, history, technique and comparison end at the first blank
  line; findings and impression may span paragraphs. Free text with no header at all
  (about 10k MIMIC reports have neither findings nor impression) is not guessed into
  findings or impression: those records carry `no_findings` / `no_impression`, and the
  free text at the end of the body goes to `last_paragraph` (the fallback target of the
  MIT-LCP sectioner and of cxrmate-ed): the paragraphs after the first paragraph of the
  body's last section (that paragraph belongs to the section's header), or the whole
  body, title lines removed, when it has no header at all. It is null whenever findings
  or impression exist.

This module is imported by worker processes: keep it free of heavy imports.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

from cxrctx.vocab import (
    SECTIONS,
    has_temporal_reference,  # noqa: F401  (the cue list lives in vocab)
)

#: Fields produced per report, in this order.
FIELDS: tuple[str, ...] = (
    "examination",
    "indication",
    "reason_for_exam",
    "history",
    "technique",
    "comparison",
    "findings",
    "impression",
    "addendum",
    "last_paragraph",
)


class Sections(NamedTuple):
    examination: str | None = None
    indication: str | None = None
    reason_for_exam: str | None = None
    history: str | None = None
    technique: str | None = None
    comparison: str | None = None
    findings: str | None = None
    impression: str | None = None
    addendum: str | None = None
    last_paragraph: str | None = None


_BOTH = "findings+impression"
_IGNORED = "_ignored"  # a real header whose section is not part of the record

#: Header (lower case, single-spaced) → canonical name, _BOTH, 'addendum' or _IGNORED.
SYNONYMS: dict[str, str] = {
    **{c: c for c in SECTIONS},
    "exam": "examination",
    "examination type": "examination",
    "type of examination": "examination",
    "type of exam": "examination",
    "procedure": "examination",
    "study": "examination",
    "indications": "indication",
    "clinical indication": "indication",
    "reason for examination": "indication",
    "reason for exam": "indication",
    "reason for study": "indication",
    "reason": "indication",
    "clinical history": "history",
    "clinical information": "history",
    "clinical info": "history",
    "patient history": "history",
    "medical history": "history",
    "history of present illness": "history",
    "pfi": "history",
    "techniques": "technique",
    "technique and views": "technique",
    "views": "technique",
    "comparisons": "comparison",
    "comparison exam": "comparison",
    "comparison exams": "comparison",
    "comparison study": "comparison",
    "comparison studies": "comparison",
    "comparison film": "comparison",
    "comparison films": "comparison",
    "reference exam": "comparison",
    "prior studies": "comparison",
    "prior study": "comparison",
    "finding": "findings",
    "reference findings": "findings",
    "chest, two views": "findings",
    "report": "findings",
    "impressions": "impression",
    "conclusion": "impression",
    "conclusions": "impression",
    "summary": "impression",
    "opinion": "impression",
    "findings and impression": _BOTH,
    "findings and impressions": _BOTH,
    "findings/impression": _BOTH,
    "findings / impression": _BOTH,
    "findings/ impression": _BOTH,
    "findings /impression": _BOTH,
    "impression and findings": _BOTH,
    "impression/findings": _BOTH,
    "addendum": "addendum",
    "addenda": "addendum",
    "final addendum": "addendum",
    "wet read": _IGNORED,
    "wetread": _IGNORED,
    "notification": _IGNORED,
    "notifications": _IGNORED,
    "recommendation": _IGNORED,
    "recommendations": _IGNORED,
    "recommendation(s)": _IGNORED,
    "comment": _IGNORED,
    "comments": _IGNORED,
    "date": _IGNORED,
    "dictated by": _IGNORED,
}

#: Unknown headers that describe the whole study are findings (as the maintainers' parser does).
_FINDINGS_LIKE = re.compile(
    r"\b(chest|portable|pa and lat|lateral and pa|ap and lat|lateral and ap|frontal and|"
    r"two views|frontal view|pa view|ap view|one view|lateral view|upright|semi-upright|supine|ribs)\b"
)
#: Typos are matched against these, with a small edit distance.
_TYPO_TARGETS = (
    *SECTIONS,
    "comparisons",
    "conclusion",
    "addendum",
    "clinical history",
    "notification",
)

_ONE_PARAGRAPH = frozenset({"examination", "indication", "history", "technique", "comparison"})
_PARA_BREAK = re.compile(r"\n[ \t]*\n")
_SEP_LINE = re.compile(r"^[ \t]*_{8,}[ \t]*$", re.M)
_TITLE_LINE = re.compile(
    r"^[ \t]*(?:FINAL|PRELIMINARY|CORRECTED|REVISED|AMENDED)?[ \t]*(?:REPORT|ADDENDUM)[ \t]*$", re.M
)
# An upper-case header at a line start, ending in ':' followed by whitespace or the end.
_HEADER = re.compile(r"\n[ \t]*([A-Z][A-Z0-9 ()/,&'-]{0,60}):(?=\s|$)")


def _norm_ws(text: str) -> str:
    return " ".join(text.split())


def _edit_distance(a: str, b: str, limit: int) -> int:
    """Levenshtein distance, giving up (returning limit + 1) once it exceeds `limit`."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        best = i
        for j, cb in enumerate(b, 1):
            v = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
            cur.append(v)
            best = min(best, v)
        if best > limit:
            return limit + 1
        prev = cur
    return prev[-1]


@lru_cache(maxsize=4096)
def canonical_header(header: str) -> str | None:
    """Map a raw header (any case) to a canonical name, _BOTH, 'addendum', _IGNORED, or None (not a header)."""
    key = _norm_ws(header.lower())
    if key in SYNONYMS:
        return SYNONYMS[key]
    if len(key) >= 5:
        limit = 1 if len(key) < 8 else 2
        for target in _TYPO_TARGETS:
            if _edit_distance(key, target, limit) <= limit:
                return SYNONYMS.get(target, target)
    if ("finding" in key or "findngs" in key) and "impression" in key:
        return _BOTH
    for main in (
        "impression",
        "findings",
        "comparison",
        "history",
        "indication",
        "technique",
        "addendum",
    ):
        if main in key:
            return main
    if _FINDINGS_LIKE.search(key):
        return "findings"
    return None


def _split_block(block: str) -> list[tuple[str | None, str]]:
    """Split one block into (canonical name or None for preamble, raw text) pieces."""
    block = "\n" + block  # the pattern starts with a literal newline: a fast scan
    pieces: list[tuple[str | None, str]] = []
    name: str | None = None
    start = 0
    for m in _HEADER.finditer(block):
        target = canonical_header(m.group(1))
        if target is None:
            continue  # an inline 'NOTE:' etc.: part of the current section
        pieces.append((name, block[start : m.start()]))
        name = target
        start = m.end()
    pieces.append((name, block[start:]))
    return pieces


def _is_body(block: str) -> bool:
    return "FINAL REPORT" in block


def _body_index(blocks: list[str]) -> int:
    """The body is the block titled FINAL REPORT; failing that, the last non-empty one
    (MIMIC puts addenda first)."""
    if len(blocks) == 1:
        return 0
    body_idx = next((i for i, b in enumerate(blocks) if _is_body(b)), None)
    if body_idx is None:
        nonempty = [i for i, b in enumerate(blocks) if b.strip()]
        body_idx = max(nonempty) if nonempty else 0
    return body_idx


def _content(name: str | None, raw: str) -> str:
    if name in _ONE_PARAGRAPH:
        # A blank line ends these sections: what follows without a header is
        # unlabelled free text, not more indication/comparison/...
        # (a header followed directly by a blank line is an empty section).
        m = _PARA_BREAK.search(raw)
        if m:
            raw = raw[: m.start()]
    return _norm_ws(raw)


def _last_paragraph(name: str | None, raw: str) -> str | None:
    """Free text at the end of a body whose last section is `name` with text `raw`."""
    if name is None:
        return _norm_ws(_TITLE_LINE.sub("", raw)) or None
    m = _PARA_BREAK.search(raw)
    return (_norm_ws(raw[m.end() :]) or None) if m else None


def parse_report(text: str) -> Sections:
    """Parse one report's text into `Sections` (None for an absent or empty section)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "________" in text:
        blocks = _SEP_LINE.split(text)
        if len(blocks) > 1:
            return _parse_blocks(blocks)
    return _parse_body(text)


#: Raw header → `canonical_header(raw)`, memoised in a plain dict (the hot loop below
#: runs ~5 times per report over 228k reports; a dict lookup is the cheapest memo).
_HEADER_MEMO: dict[str, str | None] = {}
_MISSING = object()


def _header_target(raw: str) -> str | None:
    if len(_HEADER_MEMO) > 65_536:  # unbounded spellings (garbage input): stay bounded
        _HEADER_MEMO.clear()
    target = _HEADER_MEMO[raw] = canonical_header(raw)
    return target


def _parse_body(text: str) -> Sections:
    """`parse_report` for the common case: one block, the body (no addendum separator).

    The same steps as `_parse_blocks` with `_split_block` inlined and the header lookup
    memoised in a plain dict: this loop runs for every report of a full MIMIC build."""
    block = "\n" + text  # the pattern starts with a literal newline: a fast scan
    found: dict[str, list[str]] = {}
    both: list[str] = []
    addenda: list[str] = []
    name: str | None = None
    start = 0
    memo_get = _HEADER_MEMO.get
    for m in _HEADER.finditer(block):
        header = m.group(1)
        target = memo_get(header, _MISSING)
        if target is _MISSING:
            target = _header_target(header)
        if target is None:
            continue  # an inline 'NOTE:' etc.: part of the current section
        _put(name, _content(name, block[start : m.start()]), found, both, addenda)
        name = target  # type: ignore[assignment]
        start = m.end()
    raw = block[start:]
    _put(name, _content(name, raw), found, both, addenda)
    return _assemble(found, both, addenda, (name, raw))


def _put(
    name: str | None, content: str, found: dict[str, list[str]], both: list[str], addenda: list[str]
) -> None:
    """File one body piece's text under its canonical name (nothing for an empty piece)."""
    if not content:
        return
    if name == "addendum":
        addenda.append(content)
    elif name == _BOTH:
        both.append(content)
    elif name is not None and name != _IGNORED:
        found.setdefault(name, []).append(content)


def _parse_blocks(blocks: list[str]) -> Sections:
    """`parse_report` for a report split into blocks by underscore lines (addenda)."""
    body_idx = _body_index(blocks)
    found: dict[str, list[str]] = {}
    both: list[str] = []
    addenda: list[str] = []
    last: tuple[str | None, str] = (None, "")
    for i, block in enumerate(blocks):
        if i != body_idx:  # in the body, a title line is preamble and is dropped anyway
            block = _TITLE_LINE.sub("", block)
        for name, raw in _split_block(block):
            if i == body_idx:
                last = (name, raw)
            content = _content(name, raw)
            if i == body_idx:
                _put(name, content, found, both, addenda)
            elif content and name in (None, "addendum"):
                addenda.append(content)
    return _assemble(found, both, addenda, last)


def _assemble(
    found: dict[str, list[str]],
    both: list[str],
    addenda: list[str],
    last: tuple[str | None, str],
) -> Sections:
    out = {k: v[0] if len(v) == 1 else " ".join(v) for k, v in found.items()}
    if both:
        joined = " ".join(both)
        out["findings"] = out.get("findings") or joined
        out["impression"] = out.get("impression") or joined
    get = out.get
    indication = get("indication")
    reason = None
    if indication and "//" in indication:
        reason = _norm_ws(indication.split("//", 1)[1]) or None
    findings, impression = get("findings"), get("impression")
    return Sections(  # positional: the order of FIELDS
        get("examination"),
        indication,
        reason,
        get("history"),
        get("technique"),
        get("comparison"),
        findings,
        impression,
        " ".join(addenda) or None,
        None if findings or impression else _last_paragraph(*last),
    )
