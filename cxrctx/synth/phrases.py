"""Phrase banks of the synthetic reports: the lesion vocabulary and its rates (the sentence
frames live in `frames`).

Written from scratch (no real report text). Frames are filled by `text.lesion_sentence`
({sev}, {side}, {n}, {loc}, ...). Non-temporal frames avoid every word of
`text.TEMPORAL_RE`, so the truth's temporal-reference flag is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# --------------------------------------------------------------------------------------
# Lesion vocabulary. side weights: (left, right, bilateral, none)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LesionVocab:
    noun: tuple[str, str]  # singular, plural (bilateral)
    sev: tuple[str, ...]
    side_w: tuple[float, float, float, float]
    loc: dict[str, tuple[str, ...]] = field(default_factory=dict)  # side -> location phrases
    neg: tuple[str, ...] = ()
    special: tuple[str, ...] = ()  # lesion-specific definite frames ({sev}, {side}, {loc})
    basal: bool = False  # may be written "bibasilar" / "left basilar"


_LUNG_LOC = {
    "left": (
        "in the left lower lobe",
        "in the left upper lobe",
        "at the left lung base",
        "in the left mid lung",
        "in the lingula",
    ),
    "right": (
        "in the right lower lobe",
        "in the right upper lobe",
        "at the right lung base",
        "in the right middle lobe",
        "in the right mid lung",
    ),
    "bilateral": (
        "in both lower lobes",
        "at both lung bases",
        "in both lungs",
        "throughout both lungs",
    ),
}

VOCAB: dict[str, LesionVocab] = {
    "cardiomegaly": LesionVocab(
        noun=("cardiomegaly", "cardiomegaly"),
        sev=("mild", "moderate", "severe", "mild to moderate", ""),
        side_w=(0, 0, 0, 1),
        neg=("cardiomegaly", "cardiac enlargement"),
        special=(
            "The heart is {sevly} enlarged.",
            "{Sev} cardiomegaly.",
            "There is {sev} cardiomegaly.",
            "The cardiac silhouette is {sevly} enlarged.",
            "Heart size is {sevly} enlarged.",
            "{Sev} enlargement of the cardiac silhouette is present.",
            "Cardiomegaly is {sev}.",
            "The heart is enlarged, {sev} in degree.",
            "Enlarged cardiac silhouette, {sev}.",
        ),
    ),
    "emphysema": LesionVocab(
        noun=("emphysema", "emphysema"),
        sev=("mild", "moderate", "severe", "centrilobular", "paraseptal", "bullous", ""),
        side_w=(0.03, 0.03, 0.34, 0.6),
        loc={
            "bilateral": ("in both upper lobes", "at both lung apices"),
            "left": ("in the left upper lobe",),
            "right": ("in the right upper lobe",),
        },
        neg=("emphysema",),
        special=(
            "The lungs are hyperinflated with flattening of the diaphragms, consistent with {sev} emphysema.",
            "Hyperinflation and lucency of the upper lungs reflect {sev} emphysema.",
            "Background of {sev} emphysema.",
            "{Sev} emphysematous changes are present.",
        ),
    ),
    "pleural effusion": LesionVocab(
        noun=("pleural effusion", "pleural effusions"),
        sev=(
            "small",
            "moderate",
            "large",
            "trace",
            "small to moderate",
            "moderate to large",
            "tiny",
            "layering",
        ),
        side_w=(0.3, 0.3, 0.3, 0.1),
        loc={
            "left": (
                "at the left base",
                "in the left costophrenic angle",
                "layering at the left base",
            ),
            "right": (
                "at the right base",
                "in the right costophrenic angle",
                "tracking along the right lateral chest wall",
            ),
            "bilateral": ("at both bases", "at both lung bases"),
        },
        neg=("pleural effusion", "effusion"),
        special=(
            "Blunting of the {side} costophrenic angle reflects {a} {sev} pleural effusion.",
            "{Sev} {side} effusion.",
            "There are {sev} {side} effusions.",
            "Meniscus of fluid {loc} compatible with {a} {sev} effusion.",
        ),
    ),
    "hernia": LesionVocab(
        noun=("hiatal hernia", "hiatal hernias"),
        sev=("small", "moderate", "large", "moderate-sized", ""),
        side_w=(0, 0, 0, 1),
        neg=("hiatal hernia",),
        special=(
            "Retrocardiac air-fluid level reflects {a} {sev} hiatal hernia.",
            "{A} {sev} hiatal hernia is noted.",
            "There is {a} {sev} hiatus hernia.",
            "{Sev} hiatal hernia projects behind the heart.",
            "Retrocardiac lucency with an air-fluid level is consistent with {a} {sev} hiatal hernia.",
        ),
    ),
    "nodule": LesionVocab(
        noun=("nodule", "nodules"),
        sev=(
            "4 mm",
            "6 mm",
            "8 mm",
            "9 mm",
            "1.1 cm",
            "small",
            "subcentimeter",
            "well-circumscribed",
            "12 mm",
        ),
        side_w=(0.4, 0.4, 0.1, 0.1),
        loc={
            "left": (
                "in the left upper lobe",
                "projecting over the left mid lung",
                "at the left lung base",
                "in the left apex",
            ),
            "right": (
                "in the right upper lobe",
                "projecting over the right mid lung",
                "at the right lung base",
                "in the right middle lobe",
            ),
            "bilateral": ("in both lungs", "scattered throughout both lungs"),
        },
        neg=("pulmonary nodule", "nodule", "suspicious pulmonary nodule", "nodular opacity"),
        special=(
            "{A} {sev} nodular opacity projects {loc}.",
            "There is {a} {sev} pulmonary nodule {loc}.",
            "{A} {sev} rounded nodule is seen {loc}.",
        ),
    ),
    "pneumothorax": LesionVocab(
        noun=("pneumothorax", "pneumothoraces"),
        sev=("small", "tiny", "moderate", "large", "trace", "small to moderate"),
        side_w=(0.45, 0.45, 0.03, 0.07),
        loc={
            "left": ("at the left apex", "along the left lateral chest wall"),
            "right": ("at the right apex", "along the right lateral chest wall"),
            "bilateral": ("at both apices",),
        },
        neg=("pneumothorax",),
        special=(
            "{A} {sev} {side} pneumothorax is present with a visible pleural line {loc}.",
            "There is {a} {sev} {side} pneumothorax.",
            "{Side} pneumothorax, {sev} in size.",
            "A pleural line {loc} indicates {a} {sev} pneumothorax.",
        ),
    ),
    "atelectasis": LesionVocab(
        noun=("atelectasis", "atelectasis"),
        sev=("mild", "minimal", "subsegmental", "plate-like", "linear", "patchy", "minor", ""),
        side_w=(0.3, 0.25, 0.35, 0.1),
        loc={
            "left": (
                "at the left base",
                "in the left lower lobe",
                "in the lingula",
                "in the retrocardiac region",
            ),
            "right": ("at the right base", "in the right lower lobe", "in the right middle lobe"),
            "bilateral": ("at both lung bases", "in both lower lobes"),
        },
        neg=("atelectasis",),
        special=(
            "{Sev} {side} basilar atelectasis.",
            "Streaky opacities {loc} are consistent with {sev} atelectasis.",
            "There is {sev} atelectasis {loc}.",
            "Volume loss {loc} reflects {sev} atelectasis.",
        ),
        basal=True,
    ),
    "pleural thickening": LesionVocab(
        noun=("pleural thickening", "pleural thickening"),
        sev=("mild", "minimal", "apical", "smooth", "nodular", ""),
        side_w=(0.3, 0.3, 0.3, 0.1),
        loc={
            "left": ("along the left lateral chest wall", "at the left apex"),
            "right": ("along the right lateral chest wall", "at the right apex"),
            "bilateral": ("at both apices", "along both lateral chest walls"),
        },
        neg=("pleural thickening",),
        special=(
            "{Sev} {side} pleural thickening.",
            "There is {sev} pleural thickening {loc}.",
            "{Sev} pleural thickening is seen {loc}.",
        ),
    ),
    "mass": LesionVocab(
        noun=("mass", "masses"),
        sev=("2.5 cm", "3 cm", "4.1 cm", "5 cm", "large", "lobulated", "spiculated", "ill-defined"),
        side_w=(0.45, 0.45, 0.02, 0.08),
        loc={
            "left": (
                "in the left upper lobe",
                "in the left hilar region",
                "in the left lower lobe",
            ),
            "right": (
                "in the right upper lobe",
                "in the right hilar region",
                "in the right lower lobe",
            ),
            "bilateral": ("in both lungs",),
        },
        neg=("mass", "mass lesion", "focal mass"),
        special=(
            "{A} {sev} {side} lung mass is present.",
            "There is {a} {sev} mass {loc}.",
            "{A} {sev} soft tissue mass projects {loc}.",
            "{Sev} {side} hilar mass.",
        ),
    ),
    "edema": LesionVocab(
        noun=("pulmonary edema", "pulmonary edema"),
        sev=(
            "mild",
            "moderate",
            "severe",
            "mild interstitial",
            "moderate interstitial",
            "mild to moderate",
            "alveolar",
            "",
        ),
        side_w=(0.0, 0.0, 0.35, 0.65),
        loc={
            "bilateral": (
                "in both lungs",
                "throughout both lungs",
                "in a perihilar distribution bilaterally",
            )
        },
        neg=("pulmonary edema", "edema", "overt pulmonary edema", "interstitial edema"),
        special=(
            "Pulmonary vascular congestion with {sev} edema.",
            "There is {sev} pulmonary edema.",
            "Perihilar haziness and vascular indistinctness are consistent with {sev} pulmonary edema.",
            "{Sev} interstitial edema.",
            "Kerley B lines indicate {sev} interstitial edema.",
        ),
    ),
    "consolidation": LesionVocab(
        noun=("consolidation", "consolidations"),
        sev=("focal", "patchy", "dense", "multifocal", "airspace", ""),
        side_w=(0.35, 0.4, 0.15, 0.1),
        loc=_LUNG_LOC,
        neg=("focal consolidation", "consolidation", "confluent consolidation"),
        special=(
            "There is {sev} consolidation {loc}.",
            "{Sev} {side} basilar consolidation.",
            "Airspace consolidation {loc} with air bronchograms.",
            "{Sev} consolidation is seen {loc}.",
        ),
        basal=True,
    ),
    "infiltration": LesionVocab(
        noun=("infiltrate", "infiltrates"),
        sev=("patchy", "focal", "hazy", "interstitial", "streaky", ""),
        side_w=(0.3, 0.3, 0.3, 0.1),
        loc=_LUNG_LOC,
        neg=("infiltrate", "focal infiltrate"),
        special=(
            "There is {a} {sev} infiltrate {loc}.",
            "{Sev} {side} infiltrates.",
            "{Sev} infiltrative opacities are present {loc}.",
        ),
        basal=True,
    ),
    "fibrosis": LesionVocab(
        noun=("fibrosis", "fibrosis"),
        sev=("mild", "chronic", "interstitial", "advanced", "upper lobe", ""),
        side_w=(0.05, 0.05, 0.5, 0.4),
        loc={
            "left": ("at the left apex", "in the left upper lobe"),
            "right": ("at the right apex", "in the right upper lobe"),
            "bilateral": ("at both lung bases", "in both upper lobes"),
        },
        neg=("fibrosis", "fibrotic change"),
        special=(
            "Coarse reticular opacities {loc} reflect {sev} fibrosis.",
            "{Sev} pulmonary fibrosis.",
            "{Sev} {side} fibrotic changes.",
            "Reticular markings with volume loss are consistent with {sev} fibrosis.",
        ),
        basal=True,
    ),
    "pneumonia": LesionVocab(
        noun=("pneumonia", "pneumonia"),
        sev=("multifocal", "lobar", "", "", ""),
        side_w=(0.35, 0.4, 0.15, 0.1),
        loc=_LUNG_LOC,
        neg=("pneumonia",),
        special=(
            "Opacity {loc} is consistent with pneumonia.",
            "{Side} lower lobe pneumonia.",
            "Airspace opacity {loc} compatible with {sev} pneumonia.",
            "Findings are compatible with {sev} {side} pneumonia.",
        ),
        basal=True,
    ),
}

#: per-lesion probability that a lesion that is absent gets an explicit negation
NEG_RATE = {
    "cardiomegaly": 0.3,
    "emphysema": 0.03,
    "pleural effusion": 0.55,
    "hernia": 0.02,
    "nodule": 0.05,
    "pneumothorax": 0.6,
    "atelectasis": 0.05,
    "pleural thickening": 0.02,
    "mass": 0.03,
    "edema": 0.3,
    "consolidation": 0.45,
    "infiltration": 0.04,
    "fibrosis": 0.02,
    "pneumonia": 0.12,
}
#: per-lesion probability of being newly present in a study
PREVALENCE = {
    "cardiomegaly": 0.14,
    "emphysema": 0.03,
    "pleural effusion": 0.16,
    "hernia": 0.015,
    "nodule": 0.03,
    "pneumothorax": 0.035,
    "atelectasis": 0.15,
    "pleural thickening": 0.015,
    "mass": 0.015,
    "edema": 0.09,
    "consolidation": 0.05,
    "infiltration": 0.02,
    "fibrosis": 0.015,
    "pneumonia": 0.06,
}
#: chronic lesions persist more often to the next study
PERSIST = {
    "cardiomegaly": 0.9,
    "emphysema": 0.95,
    "pleural effusion": 0.6,
    "hernia": 0.95,
    "nodule": 0.85,
    "pneumothorax": 0.4,
    "atelectasis": 0.5,
    "pleural thickening": 0.9,
    "mass": 0.9,
    "edema": 0.5,
    "consolidation": 0.5,
    "infiltration": 0.5,
    "fibrosis": 0.95,
    "pneumonia": 0.45,
}
