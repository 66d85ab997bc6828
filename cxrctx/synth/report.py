"""Assemble one synthetic report (sections, headers, addenda, layout) and its truth."""

from __future__ import annotations

from dataclasses import dataclass
from random import Random

from cxrctx.synth import frames as F
from cxrctx.synth import text as T
from cxrctx.vocab import SECTIONS

# style codes (decided per study by the structure sampler)
FULL, IMPRESSION_ONLY, FINDINGS_ONLY, NEITHER, COMBINED = range(5)
# context codes
CTX_INDICATION, CTX_HISTORY, CTX_BOTH, CTX_NONE = range(4)

EXAM_TEXT = {
    0: (
        "CHEST (PA AND LAT)",
        "Chest radiograph, PA and lateral views",
        "CHEST (PA AND LAT)",
        "PA and lateral chest radiographs",
    ),
    1: (
        "CHEST (PORTABLE AP)",
        "Portable AP chest radiograph",
        "CHEST (PORTABLE AP)",
        "Chest radiograph, single frontal view",
    ),
    2: ("CHEST (AP AND LAT)", "Chest radiograph, AP and lateral views"),
    3: ("CHEST (PA, LAT AND OBLIQUES)", "Chest radiographs, three views", "CHEST (PA AND LAT)"),
    4: ("CHEST (SINGLE VIEW)", "Chest radiograph, single PA view"),
    5: ("CHEST (SPECIAL VIEWS)", "Chest radiograph, additional view"),
    6: ("CHEST (PORTABLE AP)", "Portable AP chest radiographs, two views"),
}
TECHNIQUE_TEXT = {
    0: (
        "Chest PA and lateral",
        "PA and lateral views of the chest.",
        "Frontal and lateral views of the chest were obtained.",
    ),
    1: (
        "Portable AP upright chest radiograph.",
        "Single frontal view of the chest.",
        "Portable semi-upright AP view of the chest.",
        "AP portable chest",
    ),
    2: ("AP and lateral views of the chest.", "Chest AP and lateral"),
    3: ("PA, lateral and oblique views of the chest.", "Three views of the chest."),
    4: ("Single PA view of the chest.", "Chest PA"),
    5: ("Single view of the chest.",),
    6: ("Two portable AP views of the chest.", "AP portable chest, two images"),
}


@dataclass
class Spec:
    """What the structure sampler decided for one study (everything random about layout)."""

    exam_kind: int
    exam_desc: str
    woman: bool
    has_prior: bool
    hallucinate: bool
    style: int
    ctx: int
    h_exam: str
    h_ind: str
    h_hist: str
    h_tech: str
    h_comp: str
    h_find: str
    h_imp: str
    empty_comp: bool
    empty_tech: bool
    empty_find: bool
    addendum: bool
    wet_read: bool
    notification: bool
    recommendation: bool
    h_rec: str
    force: tuple[str, ...] = ()  # lesions that must be positive (so every lesion occurs)


@dataclass
class Built:
    text: str
    content: T.Content
    sections: dict[str, str | None]  # canonical section -> expected text (normalised) or None
    reason_for_exam: str | None
    temporal: bool


def _norm(s: str) -> str:
    return " ".join(s.split())


def _section(lines: list[str], header: str, body: str, *, own_line: bool) -> None:
    if not body:
        lines.append(f" {header}:  ")
        lines.append(" ")
        return
    if own_line:
        lines.append(f" {header}: ")
        lines.append(" ")
        lines.extend(T.wrap(body))
    else:
        lines.extend(T.wrap(body, first=f" {header}:  "))
    lines.append(" ")


def _numbered(lines: list[str], items: list[str]) -> None:
    for i, item in enumerate(items, 1):
        lines.extend(T.wrap(item, first=f" {i}.  " if len(item) < 200 else f" {i}. "))


def _indication(r: Random, woman: bool) -> tuple[str, str | None]:
    who = "woman" if woman else "man"
    hx = r.choice(F.INDICATION_HX)
    x = r.random()
    if x < 0.12:  # the reason repeats the question, as in many real indications
        q = r.choice(F.INDICATION_QUESTION)
        return f"___ year old {who} with {q}  // {q}", q
    if x < 0.55:
        reason = r.choice(F.INDICATION_REASON)
        return f"___ year old {who} with {hx}  // {reason}", reason
    if x < 0.7:
        reason = r.choice(F.INDICATION_REASON)
        return f"___-year-old {who} with {hx}, {reason}.", None
    if x < 0.85:
        return f"{hx[:1].upper()}{hx[1:]}.", None
    reason = r.choice(F.INDICATION_REASON)
    return f"History: ___{'F' if woman else 'M'} with {hx}  // {reason}", reason


def _history(r: Random, woman: bool) -> str:
    who = "female" if woman else "male"
    hx = r.choice(F.INDICATION_HX)
    return r.choice(
        (
            f"___-year-old {who} with {hx}.",
            f"{hx[:1].upper()}{hx[1:]}.",
            f"___ {who} with {hx}, evaluate.",
            f"{hx[:1].upper()}{hx[1:]}, please evaluate.",
        )
    )


def _comparison(r: Random, has_prior: bool, hallucinate: bool) -> str:
    if has_prior or hallucinate:
        return r.choice(
            (
                "___.",
                "___",
                "Chest radiograph ___.",
                "Prior chest radiographs ___ and ___.",
                "Radiograph from ___.",
                "Chest radiograph from ___ and CT chest from ___.",
            )
        )
    return r.choice(("None.", "None", "No prior studies available.", "___", "None available."))


Sections = dict[str, str | None]

_ADDENDA = (
    "Findings were discussed with Dr. ___ by Dr. ___ by telephone on ___ at ___.",
    "The examination was performed at the bedside; the technique statement is corrected accordingly.",
    "Please note the patient's name on the requisition was corrected.",
    "Additional review of the images does not alter the conclusion.",
)
_RECOMMENDATIONS = (
    "Chest CT is recommended for further evaluation.",
    "Follow-up chest radiograph after treatment is recommended.",
    "Consider CT of the chest for further characterization.",
)
_NOTIFICATIONS = (
    "The findings were discussed with Dr. ___ by Dr. ___ on the telephone on ___ at ___, ___ minutes after discovery of the findings.",
    "Findings were communicated to the referring clinician by phone on ___ at ___.",
    "The above findings were telephoned to ___ at ___ on ___.",
)


def _preamble(r: Random, spec: Spec, content: T.Content, lines: list[str]) -> None:
    """An addendum or a wet read before the final report, then the FINAL REPORT title."""
    if spec.addendum:
        lines.append(T.ADDENDUM_TITLE)
        lines.extend(T.wrap(r.choice(_ADDENDA), first=" ADDENDUM:  "))
        lines.append(" ")
        lines.append(T.UNDERSCORES)
    elif spec.wet_read:
        lines.append(
            f" WET READ: ___ ___ {r.randint(1, 12)}:{r.randint(0, 59):02d} {'AM' if r.random() < 0.5 else 'PM'}"
        )
        lines.extend(T.wrap(content.impression[0], first="   "))
        lines.append(T.UNDERSCORES)
    lines.append(T.TITLE)


def _context(r: Random, spec: Spec, lines: list[str], sections: Sections) -> str | None:
    """Examination, history, indication, technique, comparison; returns the reason for exam."""
    if spec.h_exam:
        exam = (
            r.choice(EXAM_TEXT[spec.exam_kind])
            if r.random() < 0.5
            else spec.exam_desc or EXAM_TEXT[spec.exam_kind][0]
        )
        _section(lines, spec.h_exam, exam, own_line=False)
        sections["examination"] = _norm(exam)
    reason = None
    if spec.ctx in (CTX_HISTORY, CTX_BOTH):
        hist = _history(r, spec.woman)
        _section(lines, spec.h_hist, hist, own_line=False)
        sections["history"] = _norm(hist)
    if spec.ctx in (CTX_INDICATION, CTX_BOTH):
        ind, reason = _indication(r, spec.woman)
        _section(lines, spec.h_ind, ind, own_line=False)
        sections["indication"] = _norm(ind)
    if spec.h_tech:
        tech = "" if spec.empty_tech else r.choice(TECHNIQUE_TEXT[spec.exam_kind])
        _section(lines, spec.h_tech, tech, own_line=False)
        sections["technique"] = _norm(tech) or None
    if spec.h_comp:
        comp = "" if spec.empty_comp else _comparison(r, spec.has_prior, spec.hallucinate)
        _section(lines, spec.h_comp, comp, own_line=False)
        sections["comparison"] = _norm(comp) or None
    return reason


def _route(
    r: Random, spec: Spec, content: T.Content, temporal: bool
) -> tuple[list[list[str]], list[str]]:
    """Findings paragraphs and impression items after the style's routing.

    A temporal study is guaranteed to say something temporal (one global sentence added).
    """
    findings_pars = [list(p) for p in content.findings]
    imp = list(content.impression)
    style = spec.style
    if style in (IMPRESSION_ONLY, COMBINED) or (style == FULL and spec.empty_find):
        # everything said goes to the impression
        flat = [s for p in findings_pars for s in p]
        imp = flat + [
            s
            for s in imp
            if s not in flat and (s in F.NORMAL_IMPRESSION or s in F.TEMPORAL_GLOBAL_IMPRESSION)
        ]
        findings_pars = []
    if style in (FINDINGS_ONLY, NEITHER):
        imp = []
    said = " ".join(s for p in findings_pars for s in p) + " " + " ".join(imp)
    if style != NEITHER and temporal and not T.TEMPORAL_RE.search(said):
        extra = r.choice(F.TEMPORAL_GLOBAL_IMPRESSION)
        if imp or not findings_pars:
            imp.append(extra)
        else:
            findings_pars[-1].append(extra)
    return findings_pars, imp


def _headerless(
    r: Random, lines: list[str], findings_pars: list[list[str]], content: T.Content
) -> None:
    """No FINDINGS/IMPRESSION header: non-temporal free text, or nothing; truth follows."""
    content.temporal = False
    if r.random() < 0.7:
        flat = [s for p in findings_pars for s in p if not T.TEMPORAL_RE.search(s)]
        body = T.paragraph(flat) if flat else r.choice(F.NORMAL_FINDINGS)
        lines.extend(T.wrap(body))
        lines.append(" ")
        kept = set(flat)
    else:
        kept = set()
    content.truth = {
        les: (t if t[2] in kept else ("negative", "not mentioned", "not mentioned", "nm"))
        for les, t in content.truth.items()
    }


def _findings(
    spec: Spec, lines: list[str], sections: Sections, findings_pars: list[list[str]], own: bool
) -> None:
    if not spec.h_find or not (findings_pars or spec.empty_find):
        return
    if spec.empty_find:
        _section(lines, spec.h_find, "", own_line=own)
        return
    if own:
        lines.append(f" {spec.h_find}: ")
        lines.append(" ")
        for p in findings_pars:
            lines.extend(T.wrap(T.paragraph(p)))
            lines.append(" ")
    else:
        flat = T.paragraph([s for p in findings_pars for s in p])
        _section(lines, spec.h_find, flat, own_line=False)
    sections["findings"] = _norm(" ".join(T.paragraph(p) for p in findings_pars))


def _impression(
    r: Random, spec: Spec, lines: list[str], sections: Sections, imp: list[str], own: bool
) -> None:
    if not imp:
        return
    if len(imp) >= 2 and r.random() < 0.4:
        lines.append(f" {spec.h_imp}: ")
        lines.append(" ")
        _numbered(lines, imp)
        lines.append(" ")
        sections["impression"] = _norm(" ".join(f"{i}. {s}" for i, s in enumerate(imp, 1)))
    else:
        body = T.paragraph(imp)
        _section(lines, spec.h_imp, body, own_line=own)
        sections["impression"] = _norm(body)


def _closing(r: Random, spec: Spec, lines: list[str]) -> None:
    """Recommendation and notification sections, then no trailing blank lines."""
    if spec.recommendation:
        _section(lines, spec.h_rec, r.choice(_RECOMMENDATIONS), own_line=False)
    if spec.notification:
        _section(lines, "NOTIFICATION", r.choice(_NOTIFICATIONS), own_line=False)
    while lines and lines[-1] == " ":
        lines.pop()


def build(r: Random, spec: Spec, prev: T.State) -> Built:
    """One report page and the truth it encodes (expected sections, reason, temporal flag)."""
    temporal = spec.hallucinate or (spec.has_prior and r.random() < 0.75)
    content = T.study_content(r, prev, temporal=temporal, force=spec.force)
    sections: Sections = dict.fromkeys(SECTIONS)
    lines: list[str] = []
    _preamble(r, spec, content, lines)
    reason = _context(r, spec, lines, sections)
    findings_pars, imp = _route(r, spec, content, temporal)
    own = r.random() < 0.7
    if spec.style == NEITHER:
        temporal = False
        _headerless(r, lines, findings_pars, content)
    elif spec.style == COMBINED:
        body = T.paragraph(imp)
        _section(lines, spec.h_find, body, own_line=own)
        sections["findings"] = sections["impression"] = _norm(body)
    else:
        _findings(spec, lines, sections, findings_pars, own)
        _impression(r, spec, lines, sections, imp, own)
    _closing(r, spec, lines)
    return Built("\n".join(lines) + "\n", content, sections, reason, temporal)
