"""Which SRRG organ header a piece of report text belongs under (the organ vocabulary).

Two sources, both shared: the 14 lesions of the clinical lexicon (`LESION_ORGANS`: a
mention of "effusion" or "pneumothorax" belongs under Pleura, "cardiomegaly" under
Cardiovascular, "hernia" under Abdominal, the lung lesions under Lungs and Airways) and
the anatomy and device words below (`ORGAN_TERMS`). A text that names none of them
belongs under `Other`. Used by the rules structurer to place a sentence and by the
faithfulness check to catch a bullet filed under the wrong organ (`wrong_organ`).

Entries are Python regular expressions matched case-insensitively at word starts, in the
order written: a longer phrase is listed before a word it contains ("pulmonary
vasculature" is Cardiovascular although "pulmonary" alone is Lungs and Airways). Entries
under the empty key name no organ and only stop a shorter entry from matching
("cardiopulmonary" is the whole chest, not the heart).
"""

from __future__ import annotations

import re
from functools import lru_cache

from cxrctx.vocab.facts import LESIONS
from cxrctx.vocab.lexicon import find_mentions
from cxrctx.vocab.reports import SRRG_ORGANS

LUNGS, PLEURA, CARDIO, HILA, TUBES, MSK, ABDOMEN, OTHER = SRRG_ORGANS

#: The organ header of each of the 14 lesions.
LESION_ORGANS: dict[str, str] = {
    **dict.fromkeys(LESIONS, LUNGS),
    "cardiomegaly": CARDIO,
    "pleural effusion": PLEURA,
    "pneumothorax": PLEURA,
    "pleural thickening": PLEURA,
    "hernia": ABDOMEN,
}

#: Anatomy and device words → organ header (order matters within the table: first match).
ORGAN_TERMS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("", ("cardiopulmonary", "cardio-pulmonary", "cardiothoracic", "thoracic (?:cage|cavity)")),
    (CARDIO, ("pulmonary (?:vascul\\w*|arter\\w*|vein\\w*|venous\\w*|hypertension)",
              "vascular(?:ity)?", "vasculature", "heart", "cardiac", "cardiomediastinal",
              "aort\\w*", "pericardi\\w*", "atheroscleros\\w*", "atherosclerotic",
              "ventric\\w*", "atri(?:um|al|a)", "(?:superior |inferior )?vena cava", "svc",
              "coronary", "arter(?:y|ies|ial)", "cardio\\w*")),
    (LUNGS, ("(?:kerley(?: b)?|septal) lines?", "lungs?", "pulmonary", "air ?spaces?",
             "opacit(?:y|ies)", "opacific\\w*", "opacified", "lob(?:e|es|ar)", "lingula\\w*",
             "(?:bi)?basilar", "bibasal", "(?:lung )?bases", "apices", "perihilar",
             "parenchyma\\w*", "interstiti\\w*", "reticul\\w*", "granulom\\w*", "scar(?:ring|s)?",
             "bronch\\w*", "airways?", "hyperinflat\\w*", "hyperexpan\\w*", "hyperaerat\\w*",
             "aerat\\w*", "pneumonitis", "aspiration", "cavit\\w*", "bullae?", "bullous",
             "blebs?", "copd", "hypoventilat\\w*", "volume loss", "lung volumes?")),
    (PLEURA, ("pleura\\w*", "costophrenic", "fissures?", "blunt\\w*")),
    (HILA, ("hil(?:a|um|ar|i)", "mediastin\\w*", "trache\\w*", "paratracheal", "carina",
            "lymph ?nodes?", "(?:lymph)?adenopathy", "thyroid", "thymus", "azygos")),
    (TUBES, ("tubes?", "catheters?", "lines?", "pacemakers?", "pacers?", "pacing",
             "wires?", "leads?", "a?icds?", "defibrillators?", "picc", "port(?:-?a-?cath)?s?",
             "stents?", "clips?", "drains?", "devices?", "hardware", "sternotomy", "cabg",
             "endotracheal", "enteric", "nasogastric", "orogastric", "swan-ganz",
             "electrodes?", "staples?", "sutures?", "coils?")),
    (MSK, ("bones?", "bony", "osseous", "ribs?", "spine", "spinal", "vertebra\\w*",
           "spondyl\\w*", "degenerative", "osteo\\w*", "skelet\\w*", "fractures?", "fractured",
           "scolio\\w*", "kypho\\w*", "shoulders?", "clavic\\w*", "humer\\w*", "scapula\\w*",
           "sternum", "sternal", "soft[- ]tissues?", "chest wall", "subcutaneous",
           "breasts?", "mastectomy", "axilla\\w*", "glenohumeral", "acromioclavicular",
           "thoracolumbar", "lumbar", "musculoskeletal", "dextroscoliosis")),
    (ABDOMEN, ("abdom\\w*", "free (?:intraperitoneal )?air", "pneumoperitoneum",
               "subdiaphragmatic", "intraperitoneal", "bowel", "stomach", "gastric",
               "colon\\w*", "liver", "hepat\\w*", "spleen", "splenic", "gallbladder",
               "cholecyst\\w*", "kidneys?", "renal", "hiatal", "hiatus")),
)  # fmt: skip


@lru_cache(maxsize=1)
def _terms_re() -> tuple[re.Pattern[str], dict[str, str]]:
    groups, names = [], {}
    for i, (organ, entries) in enumerate(ORGAN_TERMS):
        groups.append(f"(?P<o{i}>{'|'.join(f'(?:{e})' for e in entries)})")
        names[f"o{i}"] = organ
    return re.compile(rf"\b(?:{'|'.join(groups)})(?!\w)"), names


def organ_spans(text: str) -> list[tuple[int, int, str, bool]]:
    """(start, end, organ, is_lesion) of every organ-naming expression of `text`, in text
    order: lesion mentions (shared lexicon) and anatomy / device words."""
    pattern, names = _terms_re()
    spans = [(m.start, m.end, LESION_ORGANS[m.lesion], True) for m in find_mentions(text)]
    for m in pattern.finditer(text.lower()):
        organ = names[m.lastgroup or ""]
        if organ:
            spans.append((m.start(), m.end(), organ, False))
    return sorted(spans)


@lru_cache(maxsize=1 << 16)  # report sentences repeat ("No pneumothorax."): read each once
def organs_named(text: str) -> tuple[str, ...]:
    """The organ headers `text` names, in SRRG order (empty: it names none, so `Other`).

    Where a device is named, anatomy words only say where it lies ("catheter tip in the
    SVC", "NG tube in the stomach"): the text names the device's header and the organs of
    its lesion mentions only ("chest tube with a small pneumothorax": Pleura too)."""
    spans = organ_spans(text)
    found = {o for _, _, o, _ in spans}
    if TUBES in found:
        found = {TUBES} | {o for _, _, o, lesion in spans if lesion}
    return tuple(o for o in SRRG_ORGANS if o in found)


def organ_of(text: str) -> tuple[str, ...]:
    """The headers a sentence goes under: the organs it names, or `Other` alone."""
    return organs_named(text) or (OTHER,)
