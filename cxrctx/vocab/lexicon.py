"""The clinical lexicon: lesion mentions, negation / uncertainty cues and their scope
(NegEx style), laterality, sentence and clause splitting with character offsets.

The data is `prompts/label_lesions/lexicon_v1.json` (versioned, hashed); the code below
compiles it once and offers small functions every stage can call (they are re-exported
from `cxrctx.vocab`).
"""

from __future__ import annotations

import hashlib
import json
import re
from bisect import bisect_right
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

from cxrctx.errors import CxrctxError
from cxrctx.resources import read_bytes
from cxrctx.vocab.facts import LESIONS

#
# The clinical vocabulary shared by every stage that reads report text: lesion mentions,
# negation / uncertainty cues and their scope (NegEx style), laterality, sentence splitting.
# The data is `prompts/label_lesions/lexicon_v1.json` (versioned, hashed); the code below
# compiles it once and offers small functions other stages can call directly.


LEXICON_VERSION = 1

#: How "borderline" heart-size phrases read (documented rule, also in the lexicon file):
#: "borderline" names an enlarged heart with a qualifier → positive; "heart size at the upper
#: limits of normal" / "top normal" states a size within normal → negative. Both are marked
#: ambiguous (reason "borderline") so a model can be asked.
BORDERLINE_RULE = (
    "borderline cardiomegaly, borderline heart size, heart borderline in size, upper limits of "
    "normal or mildly enlarged -> positive; heart size at the upper limits of normal, top normal "
    "heart size -> negative; both ambiguous (reason borderline)"
)

#: Cue kinds found by `find_cues` (pre = scope runs forward, post = backward, both = clause).
CUE_KINDS = ("pseudo", "unc_both", "neg_post", "unc_post", "neg_pre", "unc_pre", "term")

#: Why a lesion's reading is ambiguous (clarity reasons, stable codes).
CLARITY_REASONS = (
    "hedged",
    "borderline",
    "conflicting_mentions",
    "scope_unsettled",
    "sides_differ",
)


class Mention(NamedTuple):
    """One lesion expression at [start, end) of the text; `borderline` is the rule's
    reading ('positive' / 'negative') for a borderline heart-size phrase, else None."""

    lesion: str
    start: int
    end: int
    borderline: str | None = None


class Cue(NamedTuple):
    kind: str
    start: int
    end: int


class MentionReading(NamedTuple):
    """How one mention reads: status affirmed / negated / hedged, the deciding cue, the side."""

    lesion: str
    start: int
    end: int
    sentence: tuple[int, int]
    status: str
    cue: str | None
    side: str | None
    reasons: tuple[str, ...]


def _body(entry: str) -> str:
    return entry.replace(" ", r"\s+")


def _words(groups: dict[str, list[str]]) -> str:
    """One regex of named alternation groups, matched at word starts only.

    The word boundary is checked once per position, not once per entry: this is what makes
    the rules labeler fast. Entries that start with punctuation (";", ", with") go into a
    twin group named `<group>_p` without the leading boundary.
    """
    word, punct = [], []
    for name, entries in groups.items():
        w = [e for e in entries if e[0].isalnum() or e[0] in "(\\"]
        p = [e for e in entries if e not in w]
        if w:
            word.append(f"(?P<{name}>{'|'.join(f'(?:{_body(e)})' for e in w)})")
        if p:
            alts = "|".join(f"(?:{_body(e)})" + (r"(?!\w)" if e[-1].isalnum() else "") for e in p)
            punct.append(f"(?P<{name}_p>{alts})")
    parts = [rf"\b(?:{'|'.join(word)})(?!\w)"] if word else []
    return "|".join(parts + punct)


def _lower(text: str) -> str:
    """Lower-cased copy of `text` with the same length (so offsets carry over)."""
    low = text.lower()
    if len(low) == len(text):
        return low
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


@dataclass(frozen=True)
class Lexicon:
    """The compiled lexicon: one regex for all mentions, one for all cues, one for sides."""

    version: int
    sha256: str
    data: dict[str, Any]
    mention_re: re.Pattern[str]
    group_lesion: dict[str, tuple[str, str | None]]
    cue_re: re.Pattern[str]
    side_re: re.Pattern[str]
    segment_re: re.Pattern[str]
    conj_re: re.Pattern[str]
    presence_re: re.Pattern[str]
    normal_re: re.Pattern[str]
    unsided: frozenset[str]


def compile_lexicon(raw: bytes, name: str = "lexicon") -> Lexicon:
    """Compile lexicon JSON bytes; a bad entry is a one-line CxrctxError naming it."""
    try:
        data = json.loads(raw)
        lesions = data["lesions"]
        if set(lesions) != set(LESIONS):
            raise CxrctxError(f"{name}: lesions must be exactly the 14 lesions")
        groups: dict[str, list[str]] = {"x": data["not_lesions"]}
        names: dict[str, tuple[str, str | None]] = {"x": ("", None)}
        for kind in ("positive", "negative"):
            groups[f"b_{kind}"] = data["borderline"][kind]
            names[f"b_{kind}"] = ("cardiomegaly", kind)
        for i, lesion in enumerate(LESIONS):
            groups[f"l{i}"] = lesions[lesion]
            names[f"l{i}"] = (lesion, None)
        neg, unc = data["negation"], data["uncertainty"]
        cues = {
            "pseudo": data["pseudo"],
            "unc_both": unc["both"],
            "neg_post": neg["post"],
            "unc_post": unc["post"],
            "neg_pre": neg["pre"],
            "unc_pre": unc["pre"],
            "term": data["terminators"],
        }
        sides = {k: data["laterality"][k] for k in ("bilateral", "left", "right")}
        segment = {"seg": ["and", "or", "nor", "with", ",", *data["terminators"]]}
        return Lexicon(
            version=int(data["version"]),
            sha256=hashlib.sha256(raw).hexdigest(),
            data=data,
            mention_re=re.compile(_words(groups)),
            group_lesion=names,
            cue_re=re.compile(_words(cues)),
            side_re=re.compile(_words(sides)),
            segment_re=re.compile(_words(segment)),
            conj_re=re.compile(_words({"conj": data["list_conjunctions"]})),
            presence_re=re.compile(
                rf"(?:{_words({'p': data['presence_modifiers']})})\W*(?:\w+\W+)?$"
            ),
            normal_re=re.compile(_words({"normal": data["normal"]})),
            unsided=frozenset(data.get("unsided", ())),
        )
    except CxrctxError:
        raise
    except (KeyError, TypeError, ValueError, re.error) as e:
        raise CxrctxError(f"{name}: invalid lexicon ({type(e).__name__}: {e})") from e


@lru_cache(maxsize=4)
def lexicon(version: int = LEXICON_VERSION) -> Lexicon:
    """The packaged lexicon `prompts/label_lesions/lexicon_v{version}.json`, compiled once."""
    name = f"lexicon_v{version}.json"
    return compile_lexicon(
        read_bytes("prompts", "label_lesions", name), f"prompts/label_lesions/{name}"
    )


_SENT_BREAK = re.compile(r"(?<=[.!?])\s+|\n[ \t]*\n\s*")


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Sentence spans (start, end) of `text`, whitespace trimmed, offsets into `text`.

    Breaks after . ! ? followed by whitespace and at blank lines; a single newline (MIMIC
    reports are hard-wrapped) and a decimal point ("2.5 cm") do not break.
    """
    spans: list[tuple[int, int]] = []
    pos = 0
    for m in _SENT_BREAK.finditer(text):
        _add_span(text, pos, m.start(), spans)
        pos = m.end()
    _add_span(text, pos, len(text), spans)
    return spans


def _add_span(text: str, a: int, b: int, out: list[tuple[int, int]]) -> None:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    if b > a:
        out.append((a, b))


def split_clauses(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Clause spans of text[start:end]: split at scope terminators (but, however, which, ;, ...)."""
    end = len(text) if end is None else end
    spans: list[tuple[int, int]] = []
    pos = start
    for c in _cues(_lower(text), start, end):
        if c.kind == "term":
            _add_span(text, pos, c.start, spans)
            pos = c.end
    _add_span(text, pos, end, spans)
    return spans


def find_mentions(text: str, start: int = 0, end: int | None = None) -> list[Mention]:
    """Every lesion expression in text[start:end] (leftmost, non-overlapping)."""
    return _mentions(_lower(text), start, end)


def _mentions(low: str, start: int = 0, end: int | None = None) -> list[Mention]:
    lex = lexicon()
    out = []
    for m in lex.mention_re.finditer(low, start, len(low) if end is None else end):
        lesion, border = lex.group_lesion[m.lastgroup or "x"]
        if lesion:
            out.append(Mention(lesion, m.start(), m.end(), border))
    return out


def find_cues(text: str, start: int = 0, end: int | None = None) -> list[Cue]:
    """Negation / uncertainty / pseudo cues and scope terminators in text[start:end]."""
    return _cues(_lower(text), start, end)


def _cues(low: str, start: int = 0, end: int | None = None) -> list[Cue]:
    it = lexicon().cue_re.finditer(low, start, len(low) if end is None else end)
    return [Cue((m.lastgroup or "").removesuffix("_p"), m.start(), m.end()) for m in it]


def mentioned_lesions(text: str) -> list[str]:
    """Lesions expressed anywhere in `text` (affirmed, hedged or negated), in LESIONS order.

    The candidate pre-pass: a lesion absent from this list is not mentioned at all.
    """
    found = {m.lesion for m in find_mentions(text)}
    return [n for n in LESIONS if n in found]


def laterality(text: str, start: int = 0, end: int | None = None) -> str | None:
    """'left' / 'right' / 'bilateral' from the side words in text[start:end], or None."""
    low = _lower(text)
    seen = {
        m.lastgroup
        for m in lexicon().side_re.finditer(low, start, len(low) if end is None else end)
    }
    return _combine_sides(seen)


def _combine_sides(sides: set[str | None] | set[str]) -> str | None:
    if "bilateral" in sides or {"left", "right"} <= sides:
        return "bilateral"
    return "left" if "left" in sides else "right" if "right" in sides else None


def read_mentions(text: str) -> list[MentionReading]:
    """Read every lesion mention of `text`: affirmed, negated or hedged, and its side.

    Scope rules (NegEx style, per sentence): a pre cue ("no", "without", "possible") covers
    the words after it up to a terminator ("but", "however", "which", ";", "there is",
    sentence end), across comma lists ("no effusion, pneumothorax or consolidation"); a
    comma followed by a presence word ("mild", "small", "stable") ends it unless the clause
    is a list with a conjunction (a mention left outside that way is scope_unsettled); a
    post cue ("is not seen", "has resolved") covers the clause before it; double negations
    ("cannot be excluded") are uncertainty. A negation that reaches the mention wins over an
    uncertainty cue inside its scope ("no opacity to suggest pneumonia" is negated).
    """
    lex = lexicon()
    low = _lower(text)
    mentions = _mentions(low)
    if not mentions:
        return []
    sents = split_sentences(text)
    starts = [s for s, _ in sents]
    by_sent: dict[int, list[Mention]] = {}
    for m in mentions:
        by_sent.setdefault(max(0, bisect_right(starts, m.start) - 1), []).append(m)
    out: list[MentionReading] = []
    for i, ms in by_sent.items():
        out.extend(_read_sentence(low, sents[i], ms, lex))
    return out


def _read_sentence(
    text: str, sent: tuple[int, int], ms: list[Mention], lex: Lexicon
) -> list[MentionReading]:
    s0, s1 = sent
    cues = _cues(text, s0, s1)
    terms = [c for c in cues if c.kind == "term"]
    triggers = [c for c in cues if c.kind not in ("term", "pseudo")]
    segs = _segments(text, s0, s1, lex)
    out = []
    for m in ms:
        neg = unc = None
        cut = False
        for c in triggers:
            hit = _scope(text, c, m, terms, s1, lex)
            if hit == "cut":
                cut = cut or c.kind == "neg_pre"
            elif hit is not None and c.kind.startswith("neg"):
                neg = neg or c
            elif hit is not None:
                unc = unc or c
        reasons: set[str] = {"borderline"} if m.borderline is not None else set()
        if neg is not None or m.borderline == "negative":
            status, cue = "negated", neg
        else:
            status, cue = ("hedged", unc) if unc is not None else ("affirmed", None)
            if unc is not None:
                reasons.add("hedged")
            if cut:
                reasons.add("scope_unsettled")
        side = None if m.lesion in lex.unsided else _side(text, m, ms, segs, lex)
        cue_text = None if cue is None else " ".join(text[cue.start : cue.end].lower().split())
        out.append(
            MentionReading(
                m.lesion, m.start, m.end, sent, status, cue_text, side, tuple(sorted(reasons))
            )
        )
    return out


def _scope(text: str, c: Cue, m: Mention, terms: list[Cue], s1: int, lex: Lexicon) -> str | None:
    """Does cue `c` reach mention `m`? None / 'yes' / 'cut' (a comma, then a presence word
    and no list conjunction in the clause: "no pneumothorax, mild cardiomegaly")."""
    if c.start >= m.start and c.end <= m.end and c.kind in ("neg_pre", "unc_pre", "unc_both"):
        return "yes"  # inside the mention: "heart is not enlarged"
    if c.end <= m.start and c.kind in ("neg_pre", "unc_pre", "unc_both"):
        end = next((t.start for t in terms if t.start >= c.end), s1)
        if m.start >= end:
            return None
        comma = text.rfind(",", c.end, m.start)
        if comma == -1 or not lex.presence_re.search(text, comma, m.start):
            return "yes"  # a list: "no consolidation, pleural effusion, pneumothorax"
        # "no pneumothorax, mild cardiomegaly": a presence word after a comma ends the scope,
        # unless the clause is a list with a conjunction ("no consolidation, pneumothorax or
        # large effusion")
        return "yes" if lex.conj_re.search(text, c.end, end) else "cut"
    if c.start >= m.end and c.kind in ("neg_post", "unc_post", "unc_both"):
        begin = max((t.end for t in terms if t.end <= c.start), default=0)
        return "yes" if m.start >= begin else None
    return None


def _segments(text: str, s0: int, s1: int, lex: Lexicon) -> list[tuple[int, int, str]]:
    """(start, end, delimiter-before) pieces of a sentence, split at , ; and / or / with ..."""
    out, pos, delim = [], s0, ""
    for d in lex.segment_re.finditer(text, s0, s1):
        out.append((pos, d.start(), delim))
        pos, delim = d.end(), text[d.start() : d.end()].lower()
    out.append((pos, s1, delim))
    return out


def _side(
    text: str, m: Mention, ms: list[Mention], segs: list[tuple[int, int, str]], lex: Lexicon
) -> str | None:
    """Side of a mention: its own clause piece, plus pieces joined by and/or that name no
    other lesion ("right and left lower lobe atelectasis"); failing that, the nearest
    neighbouring piece without a lesion ("opacity in the left base, likely atelectasis")."""
    k = next((i for i, (a, b, _) in enumerate(segs) if a <= m.start < b), len(segs) - 1)

    def sides(i: int) -> set[str]:
        a, b, _ = segs[i]
        return {x.lastgroup or "" for x in lex.side_re.finditer(text, a, b)}

    def has_mention(i: int) -> bool:
        a, b, _ = segs[i]
        return any(a <= o.start < b for o in ms if o is not m)

    own = sides(k)
    j = k
    while j > 0 and segs[j][2] in ("and", "or") and not has_mention(j - 1):
        j -= 1
        own |= sides(j)
    if own:
        return _combine_sides(own)
    for step in (-1, 1):
        j = k + step
        while 0 <= j < len(segs) and not has_mention(j):
            if s := sides(j):
                return _combine_sides(s)
            j += step
    # coordinated lesions share a side named after the last one:
    # "consolidation and atelectasis in the right lung base"
    j = k + 1
    while j < len(segs) and segs[j][2] in ("and", "or") and has_mention(j):
        a, b, _ = segs[j]
        last = max(o.end for o in ms if a <= o.start < b)
        if s := {x.lastgroup or "" for x in lex.side_re.finditer(text, last, b)}:
            return _combine_sides(s)
        j += 1
    return None


def negated(text: str, start: int, end: int) -> bool:
    """Is the lesion mention at text[start:end] negated (by the sentence around it)?"""
    return _status_at(text, start, end) == "negated"


def hedged(text: str, start: int, end: int) -> bool:
    """Is the mention at text[start:end] under an uncertainty cue ("possible", "cannot be excluded")?"""
    return _status_at(text, start, end) == "hedged"


def _status_at(text: str, start: int, end: int) -> str | None:
    for r in read_mentions(text):
        if r.start < end and start < r.end:
            return r.status
    return None


def affirmed_lesions(text: str) -> dict[str, str]:
    """Lesions with an affirmed or hedged mention → location ('not mentioned' if no side);
    the simple drop-in for keyword labelers (hedged mentions count as positive)."""
    found: dict[str, set[str]] = {}
    for r in read_mentions(text):
        if r.status != "negated":
            found.setdefault(r.lesion, set()).update({r.side} if r.side else set())
    return {n: _combine_sides(found[n]) or "not mentioned" for n in LESIONS if n in found}


def is_negative(sentence: str) -> bool:
    """Does the sentence negate something or state normality ("no", "is not seen", "clear",
    "unremarkable")? For sentence-level routing (e.g. merging generated sentences)."""
    low = _lower(sentence)
    if lexicon().normal_re.search(low):
        return True
    return any(c.kind.startswith("neg") for c in _cues(low))
