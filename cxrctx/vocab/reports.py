"""Report-level vocabulary: comparison language (the temporal-hallucination cue) and the
SRRG structured-report layout."""

from __future__ import annotations

import re

# --- comparison language (the temporal-hallucination cue) ---------------------------------

# Phrases that deny a prior ("no prior studies for comparison") are removed before the
# positive search so they do not count as temporal references.
_PRIOR_WORD = r"(?:prior|previous|old|older|earlier|outside|comparison)"
_STUDY_WORD = (
    r"(?:stud(?:y|ies)|exams?|examinations?|films?|radiographs?|images?|imaging|cts?|comparisons?)"
)
_NEGATED = re.compile(
    # "no prior studies", "without previous imaging for comparison", "none available"
    rf"\b(?:no|without|not|none)\s+(?:\w+\s+){{0,2}}?{_PRIOR_WORD}s?\b(?:\s+{_STUDY_WORD})?"
    rf"(?:\s+(?:is|are)?\s*(?:available|on file))?(?:\s+(?:for|to)\s+(?:comparison|compare))?"
    # "prior studies are not available", "comparison: none"
    rf"|\b{_PRIOR_WORD}s?(?:\s+{_STUDY_WORD})?\s+(?:is|are|were|was)\s+not\s+available"
    r"|\bcomparison\s*(?::|is|was)?\s*none\b"
    r"|\bhemodynamically stable\b|\bstable condition\b|\bclinically stable\b",
)
_TEMPORAL = re.compile(
    r"\b(?:unchanged|no (?:significant |substantial |interval |appreciable )?change"
    r"|stable|stably|interval(?:ly)?|new|newly|since|no longer"
    r"|compared|in comparison|as before|similar to|prior|previous|previously"
    r"|again (?:seen|noted|demonstrated|visualized|identified|present)"
    r"|redemonstrat\w*|persist(?:ent|s|ing|ed)?|improv(?:ed|ing|ement)|worse|worsen(?:ed|ing)?|progress(?:ed|ion)"
    r"|resolv(?:ed|ing)|resolution|remain(?:s|ed|ing)?"
    r"|(?:increase|decrease)d? (?:in|since|from)|(?:increasing|decreasing)"
    r"|(?:has|have|had) (?:increased|decreased|enlarged|diminished|developed))\b",
)


#: The two patterns as text, for engines other than Python's `re` (polars' Rust regex
#: gives the same answers on ASCII text, whose \\w, \\s and \\b both engines agree on).
TEMPORAL_PATTERN = _TEMPORAL.pattern
NEGATED_PATTERN = _NEGATED.pattern


def has_temporal_reference(*texts: str | None) -> bool:
    """Whether any text speaks as if an earlier study existed (C-SRRG's temporal-hallucination cue)."""
    for text in texts:
        if not text:
            continue
        text = text.lower()  # the patterns are lower case (faster than re.I)
        # Only text with a candidate goes through the (slower) removal of denials.
        if _TEMPORAL.search(text) and _TEMPORAL.search(_NEGATED.sub(" ", text)):
            return True
    return False


# --- structured reports (the SRRG layout) ------------------------------------------------

#: Organ headers of a structured findings section, in the order they are written; each
#: header is followed by "- " bullet sentences, the impression by a numbered list.
SRRG_ORGANS = (
    "Lungs and Airways",
    "Pleura",
    "Cardiovascular",
    "Hila and Mediastinum",
    "Tubes, Catheters, and Support Devices",
    "Musculoskeletal and Chest Wall",
    "Abdominal",
    "Other",
)
#: Column / field name of each organ header (lower case, words joined by "_").
SRRG_ORGAN_KEYS: dict[str, str] = {
    o: re.sub(r"[^a-z]+", "_", o.lower()).strip("_") for o in SRRG_ORGANS
}
