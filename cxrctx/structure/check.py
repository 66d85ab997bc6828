"""The faithfulness check of a structured report: deterministic, run on every answer.

An LLM that restructures a report can invent, drop or alter findings; this check
compares the structured answer with its source report and names what changed. The
FINDINGS bullets are checked against the FINDINGS sentences and the impression items
against the IMPRESSION sentences (a finding moved between sections fails), with these
rules (thresholds are module constants):

- **support** (`unsupported_bullet`): a bullet's content words (lower case, plural "s"
  dropped, minus `STOPWORDS`, side words and numbers) must be found, to a share of at
  least `SUPPORT_MIN` (0.6), in one source sentence or two consecutive ones (a bullet
  may join two short sentences). The best such window is the bullet's *support*.
- **numbers** (`changed_numbers`): every number of a bullet occurs in its support
  window, and every number of the source occurs in some bullet of its section.
- **laterality** (`changed_laterality`): the sides (left / right / bilateral, read with
  the shared lexicon's side words) of a bullet occur in its support window, and every
  side of a source sentence occurs in some bullet of its section.
- **negation** (`changed_negation`): a bullet may not negate ("no", "not", "without",
  ...) when its support window does not, nor state without negation what its window
  says only after a negation word (all its content words follow the first negation word
  of a clause: "No acute bony abnormality" → "Acute bony abnormality"; clauses end at the
  lexicon's scope terminators, so "No effusion, but there is cardiomegaly" →
  "Cardiomegaly" passes).
- **coverage** (`dropped_sentence`): every source sentence with content words lands in
  the bullets of its section: at least `COVERAGE_MIN` (0.7) of its content words occur
  in those bullets.
- **labels** (`changed_label`): the rules labeler (`cxrctx.labeling.rules.read_report`)
  reads the same status, location and mentioned / not mentioned of each of the 14
  lesions from the structured text (each bullet a sentence) as from the original
  FINDINGS + IMPRESSION (so a dropped "No pneumothorax." fails too).
- **organ placement** (`wrong_organ`, when the organ of each bullet is given): a bullet
  that names organs (the shared organ vocabulary, `cxrctx.vocab.organs`: lesion mentions,
  anatomy and device words) must name the organ of its header; "small left pleural
  effusion" under Cardiovascular fails, "heart size and mediastinum are normal" passes
  under either of its two organs. A bullet naming no organ ("No acute process.") may go
  under any header, and one naming an organ may not go under `Other`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from cxrctx.labeling import read_report
from cxrctx.vocab import lexicon, organs_named, split_clauses, split_sentences

#: least share of a bullet's content words found in its best source window
SUPPORT_MIN = 0.6
#: least share of a source sentence's content words found in its section's bullets
COVERAGE_MIN = 0.7
#: consecutive source sentences a bullet may draw on
WINDOW = 2
#: how much of a bullet / sentence a reason quotes (repair messages and failure rows)
QUOTE_CHARS = 80
CHECK_VERSION = 2

REASONS = (
    "unsupported_bullet",
    "dropped_sentence",
    "changed_laterality",
    "changed_numbers",
    "changed_negation",
    "changed_label",
    "wrong_organ",
)

STOPWORDS = frozenset(
    """a an the and or of in on at to for with by from as is are was were be been being
    there here this that these those it its which who whom than then also seen noted
    identified demonstrated present appears appear again there's has have had""".split()
)
NEGATIONS = frozenset("no not without negative free absent none neither nor cannot never".split())
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[a-z]+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
#: a list marker opening a sentence or bullet ("2. ", "(3) ", "- "): layout, not content
LIST_MARKER = re.compile(r"^\s*(?:[-*\u2022]\s+|\(?\d{1,2}[.)](?:\s+|$))")


# ---------------------------------------------------------------------------- words


def _norm(tok: str) -> str:
    if len(tok) > 3 and tok.endswith("s") and not tok.endswith(("ss", "is", "us")):
        return tok[:-1]
    return tok


@dataclass(frozen=True)
class Words:
    """What the check compares of one sentence or bullet."""

    text: str
    content: frozenset[str]
    numbers: tuple[str, ...]
    sides: frozenset[str]
    negated: bool


@lru_cache(maxsize=1 << 16)  # report sentences repeat across reports: split each once
def words(text: str) -> Words:
    low = LIST_MARKER.sub("", text.lower())
    side_re = lexicon().side_re
    sides = frozenset(m.lastgroup for m in side_re.finditer(low) if m.lastgroup)
    no_sides = side_re.sub(" ", low)
    toks = _TOKEN.findall(no_sides)
    content = frozenset(
        _norm(t)
        for t in toks
        if not t[0].isdigit() and t not in STOPWORDS and t not in NEGATIONS and t != "xxxx"
    )
    numbers = tuple(sorted(_NUMBER.findall(low)))
    return Words(text, content, numbers, sides, any(t in NEGATIONS for t in toks))


@lru_cache(maxsize=1 << 14)
def _negated_words(text: str) -> frozenset[str]:
    """Content words after the first negation word of each clause of `text` (its negation
    scope, broadly): clauses end at sentence ends and at the shared lexicon's scope
    terminators ("but", ";", "and the", ", with" ...), as in the rules labeler."""
    out: set[str] = set()
    for a, b in split_sentences(text):
        for c0, c1 in split_clauses(text, a, b):
            toks = _TOKEN.findall(text[c0:c1].lower())
            first = next((i for i, t in enumerate(toks) if t in NEGATIONS), len(toks))
            out |= words(" ".join(toks[first + 1 :])).content
    return frozenset(out)


def sentences(text: str | None) -> list[str]:
    """Sentences of a source section (the shared splitter: "2.5 cm" does not break), list
    markers ("1.", "2.") left out: a numbered impression splits as "1." / "Text." / "2."."""
    t = text or ""
    out = [t[a:b] for a, b in split_sentences(t)]
    return [s for s in out if LIST_MARKER.sub("", s).strip()]


def _quote(text: str) -> str:
    t = " ".join(text.split())
    return repr(t if len(t) <= QUOTE_CHARS else t[: QUOTE_CHARS - 3] + "...")


# ---------------------------------------------------------------------------- result


@dataclass
class CheckResult:
    """The check's verdict and figures for one structured answer."""

    problems: list[tuple[str, str]] = field(default_factory=list)  # (reason code, detail)
    n_bullets: int = 0
    n_sentences: int = 0
    min_support: float = 1.0
    coverage: float = 1.0  # share of source sentences landing in some bullet
    changed_lesions: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def codes(self) -> list[str]:
        return sorted({c for c, _ in self.problems}, key=REASONS.index)

    @property
    def reason(self) -> str:
        """One line for the repair request and the failure row, first code first."""
        first = self.codes[0] if self.problems else ""
        details = [d for c, d in self.problems if c == first][:3]
        more = len(self.problems) - len(details)
        tail = (
            f" (and {more} more problem(s): {', '.join(self.codes[1:]) or first})" if more else ""
        )
        return f"{first}: {'; '.join(details)}{tail}"

    def figures(self) -> dict[str, object]:
        return {
            "check_passed": self.passed,
            "check_reasons": self.codes,
            "n_bullets": self.n_bullets,
            "n_source_sentences": self.n_sentences,
            "min_support": round(self.min_support, 4),
            "coverage": round(self.coverage, 4),
        }


# ---------------------------------------------------------------------------- the check


def _windows(src: Sequence[Words]) -> list[tuple[Words, bool]]:
    """Source windows (merged words, single sentence?) of 1..WINDOW consecutive sentences."""
    out = []
    for i in range(len(src)):
        for n in range(1, WINDOW + 1):
            part = src[i : i + n]
            if len(part) < n:
                break
            out.append(
                (
                    Words(
                        " ".join(w.text for w in part),
                        frozenset().union(*(w.content for w in part)),
                        tuple(sorted(x for w in part for x in w.numbers)),
                        frozenset().union(*(w.sides for w in part)),
                        any(w.negated for w in part),
                    ),
                    n == 1,
                )
            )
    return out


def _share(part: frozenset[str], whole: frozenset[str]) -> float:
    return 1.0 if not part else len(part & whole) / len(part)


def _check_bullet(b: Words, wins: list[tuple[Words, bool]], res: CheckResult) -> None:
    if not wins:
        res.min_support = 0.0
        res.problems.append(("unsupported_bullet", f"{_quote(b.text)} has no source sentence"))
        return
    # best share first; among equals, the window agreeing with the bullet's negation, sides
    # and numbers (a bullet of stop words only, "Negative.", fits every window)
    score, *_, win = max(
        (
            (
                _share(b.content, w.content),
                b.negated == w.negated,
                b.sides <= w.sides,
                set(b.numbers) <= set(w.numbers),
                s,
                w,
            )
            for w, s in wins
        ),
        key=lambda x: x[:5],
    )
    res.min_support = min(res.min_support, score)
    if score < SUPPORT_MIN:
        res.problems.append(
            (
                "unsupported_bullet",
                f"{_quote(b.text)} ({score:.0%} of its words in any source sentence)",
            )
        )
        return
    extra_numbers = sorted(set(b.numbers) - set(win.numbers))
    if extra_numbers:
        res.problems.append(
            (
                "changed_numbers",
                f"{_quote(b.text)} has {', '.join(extra_numbers)}, its source has not",
            )
        )
    extra_sides = sorted(b.sides - win.sides)
    if extra_sides:
        res.problems.append(
            (
                "changed_laterality",
                f"{_quote(b.text)} says {', '.join(extra_sides)}, its source does not",
            )
        )
    if b.negated and not win.negated:
        res.problems.append(("changed_negation", f"{_quote(b.text)} negates {_quote(win.text)}"))
    elif not b.negated and win.negated and b.content and b.content <= _negated_words(win.text):
        res.problems.append(
            ("changed_negation", f"{_quote(b.text)} drops the negation of {_quote(win.text)}")
        )


def _check_sentence(s: Words, bullets: Sequence[Words], res: CheckResult) -> bool:
    pool = frozenset().union(*(b.content for b in bullets)) if bullets else frozenset()
    landed = not s.content or _share(s.content, pool) >= COVERAGE_MIN
    if not landed:
        res.problems.append(("dropped_sentence", f"{_quote(s.text)} is in no bullet"))
    numbers = {x for b in bullets for x in b.numbers}
    lost = sorted(set(s.numbers) - numbers)
    if lost and landed:
        res.problems.append(
            ("changed_numbers", f"{', '.join(lost)} of {_quote(s.text)} is in no bullet")
        )
    sides = frozenset().union(*(b.sides for b in bullets)) if bullets else frozenset()
    lost_sides = sorted(s.sides - sides)
    if lost_sides and landed:
        res.problems.append(
            ("changed_laterality", f"{', '.join(lost_sides)} of {_quote(s.text)} is in no bullet")
        )
    return landed


def _check_section(source: str | None, bullets: Sequence[str], res: CheckResult) -> int:
    src = [words(s) for s in sentences(source)]
    bws = [words(b) for b in bullets]
    wins = _windows(src)
    for b in bws:
        _check_bullet(b, wins, res)
    res.n_bullets += len(bws)
    res.n_sentences += len(src)
    return sum(_check_sentence(s, bws, res) for s in src)


def _labels(text: str) -> dict[str, tuple[str, str, str]]:

    return {
        r.lesion: (r.status, r.location, "mentioned" if r.mentioned else "not mentioned")
        for r in read_report(text).lesions
    }


def bullets_text(bullets: Sequence[str]) -> str:
    """The structured text as the rules labeler reads it: each bullet its own sentence."""
    return "\n\n".join(b.strip().rstrip(".") + "." for b in bullets if b.strip())


def _check_labels(source: str, bullets: Sequence[str], res: CheckResult) -> None:
    before, after = _labels(source), _labels(bullets_text(bullets))
    for lesion, was in before.items():
        now = after[lesion]
        if now != was:
            res.changed_lesions.append(lesion)
            res.problems.append(
                (
                    "changed_label",
                    f"{lesion} {'/'.join(was)} in the report, {'/'.join(now)} structured",
                )
            )


def _check_organs(organs: Mapping[str, Sequence[str]], res: CheckResult) -> None:
    for header, bullets in organs.items():
        for b in bullets:
            named = organs_named(b)
            if named and header not in named:
                res.problems.append(
                    ("wrong_organ", f"{_quote(b)} is about {' / '.join(named)}, not {header}")
                )


def check_structured(
    findings: str | None,
    impression: str | None,
    findings_bullets: Sequence[str],
    impression_items: Sequence[str],
    *,
    organs: Mapping[str, Sequence[str]] | None = None,
) -> CheckResult:
    """Check a structured report (all organ bullets, impression items) against its source;
    with `organs` (header → its bullets), also each bullet's organ."""
    res = CheckResult()
    if organs is not None:
        _check_organs(organs, res)
    landed = _check_section(findings, findings_bullets, res)
    landed += _check_section(impression, impression_items, res)
    res.coverage = landed / res.n_sentences if res.n_sentences else 1.0
    source = "\n\n".join(t.strip() for t in (findings, impression) if t and t.strip())
    _check_labels(source, [*findings_bullets, *impression_items], res)
    return res
