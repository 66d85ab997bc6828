"""Sentence frames of the synthetic reports: lesion frames, negations, normal and
temporal statements, fractures, devices, indications (the lesion vocabulary lives in
`phrases`).

Written from scratch (no real report text). Frames are filled by `text.lesion_sentence`
({sev}, {side}, {n}, {loc}, ...). Non-temporal frames avoid every word of
`text.TEMPORAL_RE`, so the truth's temporal-reference flag is exact.
"""

from __future__ import annotations

# Generic frames. {a} = article of the next word; {sev}/{Sev}; {side}/{Side} (left/right/bilateral
# or empty); {n} = noun (plural when bilateral); {loc} = location phrase (frames with {loc} are
# only used when the lesion has a phrase for that side).
DEFINITE = (
    "There is {a} {sev} {side} {n}.",
    "{Sev} {side} {n}.",
    "{A} {sev} {side} {n} is present.",
    "{A} {sev} {n} is seen {loc}.",
    "{Loc}, there is {a} {sev} {n}.",
    "{A} {sev} {side} {n} is identified.",
    "Findings are consistent with {a} {sev} {side} {n}.",
    "{A} {sev} {n} is noted {loc}.",
    "{Sev} {n} {loc}.",
    "The study demonstrates {a} {sev} {side} {n}.",
    "{A} {side} {n} is present, {sev}.",
    "There is evidence of {a} {sev} {side} {n}.",
)
HEDGED = (
    "Possible {sev} {side} {n}.",
    "Opacity {loc} may represent {n}.",
    "Cannot exclude {a} {sev} {side} {n}.",
    "{A} {side} {n} cannot be excluded.",
    "Subtle opacity {loc} could reflect {n}.",
    "Findings are suspicious for {side} {n}.",
    "Questionable {sev} {side} {n}.",
    "{A} {sev} {side} {n} is not excluded.",
    "Probable {sev} {side} {n}.",
    "Hazy opacity {loc}, possibly {n}.",
    "{Side} {n} is likely.",
    "Appearance may be due to {a} {side} {n}.",
    "{A} {side} {n} is suspected.",
    "Cannot rule out {side} {n}.",
)
TEMPORAL = {
    "same": (
        "Unchanged {sev} {side} {n}.",
        "{A} {sev} {side} {n} is unchanged from the prior study.",
        "Persistent {sev} {side} {n}.",
        "{A} {sev} {side} {n} is again seen.",
        "Stable {side} {n} compared to the previous radiograph.",
        "The {side} {n} is similar in appearance to the prior exam.",
        "The {sev} {side} {n} persists.",
        "{Sev} {side} {n} is redemonstrated.",
        "The {side} {n} remains {sev}.",
    ),
    "inc": (
        "Interval increase in the {side} {n}, now {sev}.",
        "The {side} {n} has increased since the prior study.",
        "The {side} {n} is larger compared to the previous radiograph.",
        "Worsening {side} {n}.",
        "{Side} {n} has increased in size compared to ___.",
    ),
    "dec": (
        "Interval decrease in the {side} {n}.",
        "The {side} {n} has decreased compared to the prior study, now {sev}.",
        "Improving {side} {n}.",
        "The {side} {n} is smaller than on the previous exam.",
        "{Side} {n} has improved since ___.",
    ),
    "new": (
        "New {sev} {side} {n} since the prior study.",
        "There is a new {sev} {side} {n}.",
        "{A} {sev} {side} {n} is new compared to the previous radiograph.",
        "Interval development of {a} {sev} {side} {n}.",
        "{A} {side} {n} has developed since ___.",
        "Newly seen {sev} {side} {n}.",
    ),
    "resolved": (
        "Interval resolution of the previously seen {side} {n}.",
        "The previously noted {side} {n} has resolved.",
        "The {side} {n} seen on the prior study is no longer visualized.",
        "{Side} {n} has resolved since ___.",
        "Resolution of the {side} {n} compared to the previous radiograph.",
    ),
}
NEG_ONE = (
    "No {x}.",
    "There is no {x}.",
    "No evidence of {x}.",
    "{X} is not seen.",
    "No {x} is identified.",
    "There is no evidence of {x}.",
    "{X} is absent.",
    "No definite {x}.",
)
NEG_TWO = (
    "No {x} or {y}.",
    "There is no {x} or {y}.",
    "No {x} or {y} is seen.",
    "No evidence of {x} or {y}.",
    "There is no {x} and no {y}.",
    "{X} and {y} are absent.",
)
NEG_MANY = (
    "No {xs}, or {z}.",
    "There is no {xs}, or {z}.",
    "No {xs}, or {z} is seen.",
    "There is no evidence of {xs}, or {z}.",
    "The lungs are clear without {xs}, or {z}.",
)
NEG_SPECIAL = {
    "cardiomegaly": (
        "Heart size is normal.",
        "The heart is normal in size.",
        "The cardiac silhouette is within normal limits.",
        "Normal heart size.",
        "The cardiac silhouette is not enlarged.",
        "Heart size is within normal limits.",
    ),
    "pneumothorax": ("There is no pneumothorax.", "No pneumothorax is seen."),
    "edema": ("There is no pulmonary vascular congestion or edema.", "No pulmonary edema."),
}

NORMAL_FINDINGS = (
    "The lungs are clear.",
    "The lungs are well expanded and clear.",
    "Lungs are clear bilaterally.",
    "The mediastinal and hilar contours are normal.",
    "The cardiomediastinal silhouette is normal.",
    "Mediastinal contours are within normal limits.",
    "The hilar contours are unremarkable.",
    "Pulmonary vasculature is normal.",
    "No acute osseous abnormality is seen.",
    "The osseous structures are unremarkable.",
    "Visualized upper abdomen is unremarkable.",
    "The aorta is mildly tortuous.",
    "There is mild atherosclerotic calcification of the aortic knob.",
    "Mild degenerative changes are seen in the thoracic spine.",
    "Surgical clips project over the upper abdomen.",
    "Median sternotomy wires are intact.",
    "Lung volumes are low.",
)
NORMAL_IMPRESSION = (
    "No acute cardiopulmonary process.",
    "No acute cardiopulmonary abnormality.",
    "No acute intrathoracic process.",
    "No evidence of acute cardiopulmonary disease.",
    "Normal chest radiograph.",
    "No radiographic evidence of acute disease.",
    "Clear lungs.",
    "No acute findings in the chest.",
)
TEMPORAL_GLOBAL_FINDINGS = (
    "Compared to the prior study there is no significant interval change.",
    "The appearance of the chest is unchanged from the prior radiograph.",
    "Comparison is made to the previous study from ___.",
    "As compared to the previous radiograph, the lung volumes are similar.",
    "Lung volumes remain low.",
)
TEMPORAL_GLOBAL_IMPRESSION = (
    "No significant change from the prior study.",
    "Unchanged appearance of the chest compared to ___.",
    "Stable chest radiograph.",
    "No interval change.",
    "Findings are similar to the prior exam.",
)
FRACTURE = (
    "Healed left rib fractures are seen.",
    "Old healed right rib fractures.",
    "There is a mildly displaced fracture of the right clavicle.",
    "Compression deformity of a lower thoracic vertebral body is noted.",
)
FRACTURE_NEG = ("No displaced rib fracture is seen.", "No acute fracture.")
DEVICES = (
    "Endotracheal tube terminates {cm} cm above the carina.",
    "The endotracheal tube tip is {cm} cm above the carina.",
    "Right internal jugular central venous catheter terminates in the mid SVC.",
    "Left internal jugular catheter tip projects over the cavoatrial junction.",
    "A right-sided PICC line ends in the low SVC.",
    "Left PICC terminates in the upper SVC.",
    "Nasogastric tube courses below the diaphragm with the tip in the stomach.",
    "An enteric tube passes below the diaphragm and out of view.",
    "Left-sided pacemaker with leads in the right atrium and right ventricle.",
    "Dual-chamber pacemaker leads project over the right heart.",
    "A right chest tube is in place.",
    "Left chest tube tip projects over the left apex.",
    "Right-sided Port-A-Cath terminates at the cavoatrial junction.",
    "Sternal wires and mediastinal clips are consistent with a history of CABG.",
)

INDICATION_HX = (
    "shortness of breath",
    "chest pain",
    "fever and cough",
    "s/p fall",
    "CHF",
    "COPD exacerbation",
    "hypoxia",
    "s/p CABG",
    "intubated",
    "altered mental status",
    "sepsis",
    "dyspnea on exertion",
    "productive cough",
    "lung cancer",
    "weakness",
    "tachycardia",
    "hemoptysis",
    "new ET tube",
    "pleuritic chest pain",
    "ESRD on HD",
    "s/p thoracentesis",
    "trauma",
    "syncope",
    "leukocytosis",
)
INDICATION_REASON = (
    "eval for pneumonia",
    "?pneumonia",
    "?pleural effusion",
    "r/o pneumothorax",
    "assess ETT position",
    "evaluate for acute process",
    "eval for edema",
    "line placement",
    "eval for infiltrate",
    "r/o acute cardiopulmonary process",
    "interval change",
    "eval for consolidation",
    "NGT placement",
    "evaluate for fluid overload",
    "r/o ptx",
    "eval for free air",
)


INDICATION_QUESTION = (
    "?pleural effusion",
    "?pneumonia",
    "?PNA",
    "?CHF",
    "?pneumothorax",
    "?aspiration",
    "?edema",
    "?infiltrate",
    "?mass",
    "?fluid overload",
)
