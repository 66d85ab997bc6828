"""Synthetic report text: lesion sentences, sections and the MIMIC-CXR page layout.

Everything here is written from scratch (no real report text). Sentences are built
compositionally (frames x nouns x severities x locations) so that a labeler sees many
phrasings per lesion, and every lesion sentence returns the truth it encodes.

Temporal language (see `TEMPORAL_RE`) appears in findings/impression *only* where the
generator decided so (`temporal=True`); non-temporal templates avoid every cue word so
that `has_temporal_reference` in the truth is exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from random import Random

from cxrctx.synth.frames import (
    DEFINITE,
    DEVICES,
    FRACTURE,
    FRACTURE_NEG,
    HEDGED,
    NEG_MANY,
    NEG_ONE,
    NEG_SPECIAL,
    NEG_TWO,
    NORMAL_FINDINGS,
    NORMAL_IMPRESSION,
    TEMPORAL,
    TEMPORAL_GLOBAL_FINDINGS,
    TEMPORAL_GLOBAL_IMPRESSION,
)
from cxrctx.synth.phrases import (
    NEG_RATE,
    PERSIST,
    PREVALENCE,
    VOCAB,
    LesionVocab,
)
from cxrctx.vocab import LESIONS

WIDTH = 79
UNDERSCORES = " " + "_" * 78
TITLE = " " * 33 + "FINAL REPORT"
ADDENDUM_TITLE = " " * 32 + "FINAL ADDENDUM"

#: Words that make a findings/impression sentence speak about an earlier study.
TEMPORAL_RE = re.compile(
    r"\b(unchanged|stable|prior|previous|previously|compared|comparison|interval|new|newly|"
    r"again|persistent|persists|improv\w*|worse\w*|worsening|increas\w*|decreas\w*|"
    r"resolv\w*|resolution|since|redemonstrat\w*|remain\w*|similar)\b",
    re.IGNORECASE,
)

SIDES = ("left", "right", "bilateral", "none")


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:] if s else s


_SPACE_RE = re.compile(r" {2,}")
_SINGULAR_VERB_RE = re.compile(r"\b(is|has|remains|persists)\b")
_PLURAL_VERB = {"is": "are", "has": "have", "remains": "remain", "persists": "persist"}
#: uncountable lesion nouns take no article ("There is mild atelectasis.")
MASS_NOUNS = frozenset(
    {
        "cardiomegaly",
        "emphysema",
        "atelectasis",
        "pleural thickening",
        "edema",
        "consolidation",
        "fibrosis",
        "pneumonia",
    }
)
_EMPTY_SEV_RE = re.compile(
    r"\{[Ss]ev\}[.,]|, \{sev\}|now \{sev\}|remains \{sev\}|\{sev\} in (size|degree)"
)
_AN_RE = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")
_AN_NUM_RE = re.compile(r"\b([Aa]) (?=(8|11|18)\b|8\d\b)")
_BAD_PUNCT_RE = re.compile(r" ([.,])")


def _clean(s: str) -> str:
    s = _SPACE_RE.sub(" ", s).strip()
    s = _BAD_PUNCT_RE.sub(r"\1", s)
    s = s.replace(", ,", ",").replace(",.", ".")
    s = _AN_RE.sub(r"\1n ", s)
    s = _AN_NUM_RE.sub(r"\1n ", s)
    return _cap(s)


def _fill(frame: str, *, sev: str, side: str, noun: str, loc: str, mass: bool = False) -> str:
    sevly = {
        "mild": "mildly",
        "moderate": "moderately",
        "severe": "severely",
        "mild to moderate": "mildly to moderately",
    }.get(sev, "")
    text = frame.format(
        a="" if mass else "a",
        A="" if mass else "A",
        sev=sev,
        Sev=_cap(sev),
        sevly=sevly,
        side=side,
        Side=_cap(side),
        n=noun,
        N=_cap(noun),
        loc=loc,
        Loc=_cap(loc),
    )
    return _clean(text)


def _loc_for(r: Random, v: LesionVocab, side: str) -> str:
    opts = v.loc.get(side, ())
    return r.choice(opts) if opts else ""


def lesion_sentence(r: Random, lesion: str, side: str, sev: str, kind: str) -> str:
    """One sentence asserting `lesion`. kind: definite, hedged, same, inc, dec, new, resolved."""
    v = VOCAB[lesion]
    loc = _loc_for(r, v, side)
    side_word = "" if side == "none" else side
    noun = v.noun[1] if side == "bilateral" else v.noun[0]
    if kind == "definite":
        pool = DEFINITE + v.special if r.random() < 0.6 else v.special or DEFINITE
    elif kind == "hedged":
        pool = HEDGED
    else:
        pool = TEMPORAL[kind]
    for _ in range(8):
        frame = r.choice(pool)
        if "{loc}" in frame or "{Loc}" in frame:
            if not loc:
                continue
        # a frame that names the side and also a location would say it twice
        if ("{loc}" in frame or "{Loc}" in frame) and ("{side}" in frame or "{Side}" in frame):
            side_fill = ""
        else:
            side_fill = side_word
        if side == "bilateral" and v.basal and "basilar" in frame:
            frame = frame.replace("{side} basilar", "bibasilar").replace(
                "{Side} basilar", "Bibasilar"
            )
        if "{side} lower lobe" in frame.lower() and side in ("bilateral", "none"):
            continue
        if not sev and _EMPTY_SEV_RE.search(frame):
            continue
        if "{sevly}" in frame and sev not in ("mild", "moderate", "severe", "mild to moderate"):
            continue
        if "{side} effusions" in frame and side != "bilateral":
            continue
        if (
            kind == "definite"
            and frame in v.special
            and side in ("left", "right")
            and "{side}" not in frame.lower()
            and "{loc}" not in frame.lower()
        ):
            continue  # keep laterality recoverable from the sentence
        if (
            side in ("left", "right", "bilateral")
            and "{side}" not in frame.lower()
            and "{loc}" not in frame.lower()
            and "basilar" not in frame
        ):
            continue
        singular = side != "bilateral" or "{a}" in frame.lower() or v.noun[0] == v.noun[1]
        if not singular and _SINGULAR_VERB_RE.search(frame):
            frame = _SINGULAR_VERB_RE.sub(lambda m: _PLURAL_VERB[m.group(1)], frame)
        return _fill(
            frame,
            sev=sev,
            side=side_fill,
            noun=v.noun[0] if singular else v.noun[1],
            loc=loc,
            mass=lesion in MASS_NOUNS,
        )
    # fallback: always valid
    return _fill(
        "{Sev} {side} {n}.", sev=sev, side=side_word, noun=noun, loc="", mass=lesion in MASS_NOUNS
    )


def negation_sentence(r: Random, lesions: list[str]) -> str:
    """One sentence negating all of `lesions` (1 to 4)."""
    if len(lesions) == 1 and lesions[0] in NEG_SPECIAL and r.random() < 0.5:
        return r.choice(NEG_SPECIAL[lesions[0]])
    words = [r.choice(VOCAB[les].neg) for les in lesions]
    if len(words) == 1:
        return _clean(r.choice(NEG_ONE).format(x=words[0], X=_cap(words[0])))
    if len(words) == 2:
        return _clean(r.choice(NEG_TWO).format(x=words[0], X=_cap(words[0]), y=words[1]))
    return _clean(r.choice(NEG_MANY).format(xs=", ".join(words[:-1]), z=words[-1]))


# --------------------------------------------------------------------------------------
# Study content: lesion states, sentences and truth
# --------------------------------------------------------------------------------------

State = dict[str, tuple[str, int]]  # lesion -> (side, severity index)


@dataclass
class Content:
    """The findings/impression material of one study and the truth it encodes."""

    findings: list[list[str]]  # paragraphs of sentences
    impression: list[str]
    truth: dict[str, tuple[str, str, str, str]]  # lesion -> (status, location, rationale, mention)
    devices: bool
    fracture: str  # pos / neg / nm
    temporal: bool
    state: State


def _side(r: Random, v: LesionVocab) -> str:
    x = r.random()
    acc = 0.0
    for s, w in zip(SIDES, v.side_w, strict=True):
        acc += w
        if x < acc:
            return s
    return "none"


Truth = dict[str, tuple[str, str, str, str]]  # lesion -> (status, location, rationale, mention)


def _evolve(
    r: Random, prev: State, force: tuple[str, ...]
) -> tuple[State, list[str], dict[str, str]]:
    """This study's lesion states from the previous study's: persist (same/inc/dec), resolve, new."""
    state: State = {}
    resolved: list[str] = []
    kinds: dict[str, str] = {}
    for les in LESIONS:
        v = VOCAB[les]
        if les in prev and r.random() < PERSIST[les]:
            side, sev_i = prev[les]
            x = r.random()
            change = "same" if x < 0.6 else "inc" if x < 0.8 else "dec"
            if change == "inc":
                sev_i = min(sev_i + 1, len(v.sev) - 1)
            elif change == "dec":
                sev_i = max(sev_i - 1, 0)
            state[les] = (side, sev_i)
            kinds[les] = change
        elif les in prev and les not in force:
            resolved.append(les)
        elif r.random() < PREVALENCE[les] or les in force:
            state[les] = (_side(r, v), r.randrange(len(v.sev)))
            kinds[les] = "new"
    return state, resolved, kinds


def _positive_sentences(
    r: Random, state: State, kinds: dict[str, str], temporal: bool, truth: Truth
) -> list[str]:
    """One sentence per present lesion (definite, hedged, or temporal when `temporal`)."""
    sentences = []
    for les in LESIONS:
        if les not in state:
            continue
        side, sev_i = state[les]
        sev = VOCAB[les].sev[sev_i]
        hedged = r.random() < 0.15
        if hedged:
            kind = "hedged"
        elif temporal and r.random() < 0.7:
            kind = kinds[les]
        else:
            kind = "definite"
        s = lesion_sentence(r, les, side, sev, kind)
        sentences.append(s)
        truth[les] = (
            "positive",
            "not mentioned" if side == "none" else side,
            s,
            "hedged" if hedged else "pos",
        )
    return sentences


def _negative_sentences(
    r: Random, state: State, prev: State, resolved: list[str], temporal: bool, truth: Truth
) -> list[str]:
    """Sentences for resolved lesions (temporal only), grouped negations; the rest unmentioned."""
    sentences = []
    neg_pool: list[str] = []
    for les in LESIONS:
        if les in state:
            continue
        if les in resolved and temporal and r.random() < 0.7:
            s = lesion_sentence(r, les, prev[les][0], VOCAB[les].sev[prev[les][1]], "resolved")
            sentences.append(s)
            truth[les] = ("negative", "not mentioned", s, "neg")
        elif r.random() < NEG_RATE[les]:
            neg_pool.append(les)
    r.shuffle(neg_pool)
    while neg_pool:
        k = min(len(neg_pool), r.choice((1, 1, 2, 2, 3, 4)))
        group, neg_pool = neg_pool[:k], neg_pool[k:]
        s = negation_sentence(r, group)
        sentences.append(s)
        for les in group:
            truth[les] = ("negative", "not mentioned", s, "neg")
    for les in LESIONS:
        truth.setdefault(les, ("negative", "not mentioned", "not mentioned", "nm"))
    return sentences


def _extras(r: Random, state: State) -> tuple[list[str], bool, str]:
    """Devices, a fracture statement and a few normal statements that do not contradict `state`."""
    extra: list[str] = []
    devices = r.random() < 0.22
    if devices:
        for d in r.sample(DEVICES, r.choice((1, 1, 2, 3))):
            extra.append(d.format(cm=r.choice(("3", "4", "4.5", "5", "2.5", "6"))))
    x = r.random()
    fracture = "pos" if x < 0.03 else "neg" if x < 0.08 else "nm"
    if fracture == "pos":
        extra.append(r.choice(FRACTURE))
    elif fracture == "neg":
        extra.append(r.choice(FRACTURE_NEG))
    normal: list[str] = []
    topics: set[str] = set()
    for s in r.sample(NORMAL_FINDINGS, 4):
        topic = next((t for t in ("lung", "hilar", "mediastin", "osseous") if t in s.lower()), s)
        if (
            topic in topics
            or (state and "clear" in s)
            or ("cardiomegaly" in state and "cardiomediastinal" in s)
        ):
            continue
        topics.add(topic)
        normal.append(s)
    n_normal = r.choice((0, 1, 1, 2))
    extra.extend(normal[:n_normal])
    return extra, devices, fracture


def _findings(
    r: Random, lesion_sents: list[str], extra: list[str], devices: bool, temporal: bool
) -> list[list[str]]:
    r.shuffle(lesion_sents)
    if temporal and r.random() < 0.35:
        lesion_sents.insert(0, r.choice(TEMPORAL_GLOBAL_FINDINGS))
    findings: list[list[str]]
    if devices and r.random() < 0.5:
        findings = [extra[: len(extra)], lesion_sents] if lesion_sents else [extra]
    else:
        findings = [lesion_sents + extra]
    return [p for p in findings if p]


def _impression(r: Random, state: State, truth: Truth, temporal: bool) -> list[str]:
    """The positives restated briefly (at most three), or a normal statement."""
    imp: list[str] = []
    positives = [les for les in LESIONS if les in state]
    if not positives:
        if temporal and r.random() < 0.5:
            imp.append(r.choice(TEMPORAL_GLOBAL_IMPRESSION))
        else:
            imp.append(r.choice(NORMAL_IMPRESSION))
    else:
        for les in positives[:3]:
            imp.append(truth[les][2])
        if temporal and r.random() < 0.3:
            imp.append(r.choice(TEMPORAL_GLOBAL_IMPRESSION))
    return imp


def study_content(
    r: Random, prev: State, *, temporal: bool, force: tuple[str, ...] = ()
) -> Content:
    """Sample lesions (evolving from `prev`) and write their sentences.

    `temporal` decides whether comparison language is used. mention codes in truth:
    pos (definite), hedged, neg (negated), nm (not mentioned).
    """
    state, resolved, kinds = _evolve(r, prev, force)
    truth: Truth = {}
    sentences = _positive_sentences(r, state, kinds, temporal, truth)
    sentences += _negative_sentences(r, state, prev, resolved, temporal, truth)
    extra, devices, fracture = _extras(r, state)
    findings = _findings(r, sentences, extra, devices, temporal)
    imp = _impression(r, state, truth, temporal)
    if not findings:
        findings = [[r.choice(NORMAL_FINDINGS)]]
    return Content(findings, imp, truth, devices, fracture, temporal, state)


# --------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------


def wrap(text: str, first: str = " ") -> list[str]:
    """Greedy wrap at WIDTH; continuation lines start with one space; keeps double spaces."""
    tokens = re.split(r"( +)", text.strip())
    lines: list[str] = []
    cur = first
    sep = ""
    fresh = True
    for i, tok in enumerate(tokens):
        if i % 2 == 1:
            sep = tok
            continue
        cand = cur + tok if fresh else cur + sep + tok
        if fresh or len(cand) <= WIDTH:
            cur = cand
        else:
            lines.append(cur)
            cur = " " + tok
        fresh = False
    lines.append(cur)
    return lines


def paragraph(sentences: list[str]) -> str:
    """Sentences joined MIMIC-style with two spaces."""
    return "  ".join(sentences)
