"""The random structure of a synthetic MIMIC-CXR root, drawn vectorised with numpy.

Patients, studies over time (same-day, same-datetime, missing times), images and views,
splits, and per-study report layout decisions (styles, header spellings, rare cases as
exact quotas). Report text is written later from these decisions (`report.build`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cxrctx.synth import report as R
from cxrctx.vocab import LESIONS

DICOM_SCALE = 128  # DICOM mode writes images at 1/128 of the nominal size (header == CSV)

#: Frequency of each rare case: (rate among eligible studies/patients, minimum count).
VARIETY_RATES: dict[str, tuple[float, int]] = {
    "same_day": (0.06, 1),  # of non-first studies: same date, later time
    "same_datetime": (0.004, 1),  # of non-first studies: exact same date+time as the previous
    "missing_time": (0.03, 1),  # of studies: StudyTime blank on every image
    "multi_time_images": (0.02, 1),  # of multi-image studies: later images a few seconds later
    "blank_view": (0.04, 1),  # of images: ViewPosition blank
    "blank_procedure": (0.01, 1),  # of studies: PerformedProcedureStepDescription blank
    "neither": (0.04, 1),  # of studies: no FINDINGS and no IMPRESSION header
    "combined": (0.01, 1),  # of studies: "FINDINGS AND IMPRESSION:"
    "impression_only": (0.27, 1),
    "findings_only": (0.11, 1),
    "empty_comparison": (0.03, 1),  # of studies with a comparison header
    "empty_technique": (0.03, 1),  # of studies with a technique header
    "empty_findings": (0.015, 1),  # of full studies: FINDINGS header, no text
    "addendum": (0.03, 1),
    "wet_read": (0.02, 1),
    "notification": (0.03, 1),
    "recommendation": (0.02, 1),
    "hallucinated_prior": (0.06, 2),  # of first studies: temporal language without a prior
    "split_test": (0.01, 1),  # of patients
    "split_validate": (0.01, 1),
}

#: Header spellings: section slot -> ((spelling, weight), ...); every spelling is forced to
#: appear at least once when the slot has enough eligible studies.
HEADERS: dict[str, tuple[tuple[str, float], ...]] = {
    "examination": (("EXAMINATION", 0.92), ("EXAM", 0.08)),
    "indication": (
        ("INDICATION", 0.93),
        ("REASON FOR EXAMINATION", 0.025),
        ("REASON FOR EXAM", 0.02),
        ("CLINICAL INDICATION", 0.025),
    ),
    "history": (("HISTORY", 0.85), ("CLINICAL HISTORY", 0.11), ("CLINICAL INFORMATION", 0.04)),
    "comparison": (("COMPARISON", 0.95), ("COMPARISONS", 0.04), ("COMPARISION", 0.01)),
    "findings": (("FINDINGS", 0.99), ("FINDNGS", 0.01)),
    "impression": (("IMPRESSION", 0.96), ("CONCLUSION", 0.03), ("IMPRESSON", 0.01)),
    "recommendation": (("RECOMMENDATION(S)", 0.8), ("RECOMMENDATIONS", 0.2)),
}

# study kinds: 0 PA+lateral, 1 portable AP, 2 AP+lateral, 3 PA+lateral+extra, 4 single PA,
# 5 one special view, 6 two portable APs. Weights give MIMIC's view mix and ~1.65 images/study.
KIND_WEIGHTS = (0.36, 0.36, 0.14, 0.055, 0.03, 0.005, 0.05)
KIND_IMAGES = (2, 1, 2, 3, 1, 1, 2)
KIND_PROCEDURES: tuple[tuple[tuple[str, float], ...], ...] = (
    (("CHEST (PA AND LAT)", 0.9), ("CHEST (PRE-OP PA AND LAT)", 0.07), ("CHEST PA AND LAT", 0.03)),
    (
        ("CHEST (PORTABLE AP)", 0.85),
        ("CHEST PORT. LINE PLACEMENT", 0.08),
        ("CHEST (SINGLE VIEW)", 0.05),
        ("DX CHEST PORTABLE PICC LINE PLACEMENT", 0.02),
    ),
    (("CHEST (PA AND LAT)", 0.6), ("CHEST (PORTABLE AP)", 0.4)),
    (("CHEST (PA, LAT & OBLIQUES)", 0.6), ("CHEST (PA AND LAT)", 0.4)),
    (("CHEST (SINGLE VIEW)", 0.7), ("CHEST (PA AND LAT)", 0.3)),
    (
        ("CHEST (SINGLE VIEW)", 0.4),
        ("CHEST (LAT DECUB ONLY)", 0.3),
        ("CHEST (APICAL LORDOTIC ONLY)", 0.3),
    ),
    (("CHEST (PORTABLE AP)", 0.9), ("CHEST PORT. LINE PLACEMENT", 0.1)),
)
THIRD_VIEWS = (
    ("AP", 0.3),
    ("LL", 0.2),
    ("LAO", 0.1),
    ("RAO", 0.1),
    ("AP AXIAL", 0.05),
    ("SWIMMERS", 0.05),
    ("LPO", 0.05),
    ("RPO", 0.05),
    ("PA", 0.1),
)
RARE_VIEWS = (
    "XTABLE LATERAL",
    "AP LLD",
    "PA LLD",
    "AP RLD",
    "PA RLD",
    "SWIMMERS",
    "L5 S1",
    "AP AXIAL",
    "LAO",
    "RAO",
)
FORCED_VIEWS = ("LAO", "RAO", "AP AXIAL", "XTABLE LATERAL", "AP LLD", "SWIMMERS")
VIEW_MEANING = {
    "PA": "postero-anterior",
    "AP": "antero-posterior",
    "LATERAL": "lateral",
    "LL": "left lateral",
    "LAO": "left anterior oblique",
    "RAO": "right anterior oblique",
    "LPO": "left posterior oblique",
    "RPO": "right posterior oblique",
    "AP AXIAL": "antero-posterior",
    "XTABLE LATERAL": "lateral",
    "AP LLD": "antero-posterior",
    "PA LLD": "postero-anterior",
    "AP RLD": "antero-posterior",
    "PA RLD": "postero-anterior",
    "SWIMMERS": "lateral",
    "L5 S1": "lateral",
}
DIMS = (
    (3056, 2544),
    (2544, 3056),
    (3050, 2539),
    (2539, 3050),
    (3520, 4280),
    (4280, 3520),
    (2022, 2022),
    (2500, 2048),
    (3480, 4240),
    (1914, 2198),
)
DIM_WEIGHTS = (0.4, 0.12, 0.12, 0.04, 0.08, 0.04, 0.04, 0.06, 0.06, 0.04)


def _unique_ids(rng: np.random.Generator, n: int, lo: int, hi: int) -> np.ndarray:
    """n distinct random ints in [lo, hi), in random order."""
    out = np.empty(0, dtype=np.int64)
    while out.size < n:
        draw = rng.integers(lo, hi, size=int((n - out.size) * 1.05) + 16, dtype=np.int64)
        both = np.concatenate([out, draw])
        _, first = np.unique(both, return_index=True)
        out = both[np.sort(first)]
    return out[:n]


def _quota(rng: np.random.Generator, eligible: np.ndarray, key: str) -> np.ndarray:
    """Boolean mask choosing exactly max(minimum, round(rate*n)) of the eligible positions."""
    rate, minimum = VARIETY_RATES[key]
    idx = np.flatnonzero(eligible)
    k = min(idx.size, max(minimum, round(rate * idx.size)))
    mask = np.zeros(eligible.shape[0], dtype=bool)
    if k:
        mask[rng.choice(idx, size=k, replace=False)] = True
    return mask


def _weighted(rng: np.random.Generator, options: Sequence[tuple[str, float]], n: int) -> np.ndarray:
    names = np.array([o for o, _ in options], dtype=object)
    w = np.array([p for _, p in options], dtype=float)
    return names[rng.choice(len(names), size=n, p=w / w.sum())]


def _spellings(rng: np.random.Generator, slot: str, eligible: np.ndarray) -> np.ndarray:
    """Header spelling per study ('' where not eligible); each spelling appears at least once."""
    opts = HEADERS[slot]
    out = np.full(eligible.shape[0], "", dtype=object)
    idx = np.flatnonzero(eligible)
    if idx.size == 0:
        return out
    out[idx] = _weighted(rng, opts, idx.size)
    if idx.size >= 2 * len(opts):
        default = opts[0][0]
        for name, _ in opts[1:]:
            if not (out[idx] == name).any():
                pool = idx[out[idx] == default]
                out[rng.choice(pool)] = name
    return out


# --------------------------------------------------------------------------------------
# structure (vectorised)
# --------------------------------------------------------------------------------------


@dataclass
class Structure:
    subject_ids: np.ndarray  # per patient
    woman: np.ndarray
    split: np.ndarray  # per patient (object)
    st_pat: np.ndarray  # per study: patient index
    study_ids: np.ndarray
    date: np.ndarray  # days since 2100-01-01
    time_ms: np.ndarray  # ms of day of the earliest image, -1 when missing
    kind: np.ndarray
    procedure: np.ndarray  # object
    n_prior: np.ndarray
    same_time: np.ndarray
    same_day_unordered: np.ndarray
    multi_time: np.ndarray
    specs: dict[str, np.ndarray]  # report spec columns
    im_study: np.ndarray  # per image: study index
    im_dicom: np.ndarray  # object
    im_view: np.ndarray  # object
    im_rows: np.ndarray
    im_cols: np.ndarray
    im_time_ms: np.ndarray
    im_view_meaning: np.ndarray
    im_orient: np.ndarray
    varieties: dict[str, int]


def _patients(rng: np.random.Generator, P: int) -> tuple[np.ndarray, ...]:
    """subject_ids, woman, studies per patient (geometric, ≤ 12) and the study_ids."""
    subject_ids = np.sort(_unique_ids(rng, P, 10_000_000, 20_000_000))
    woman = rng.random(P) < 0.48
    n_st = np.minimum(rng.geometric(0.2815, P), 12).astype(np.int64)
    study_ids = _unique_ids(rng, int(n_st.sum()), 50_000_000, 60_000_000)
    return subject_ids, woman, n_st, study_ids


def _split(rng: np.random.Generator, P: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patient-level split: exact test and validate quotas, the rest train."""
    split = np.full(P, "train", dtype=object)
    test = _quota(rng, np.full(P, P >= 2), "split_test")
    split[test] = "test"
    val = _quota(rng, (~test) & (P >= 3), "split_validate")
    split[val] = "validate"
    return split, test, val


def _dates(
    rng: np.random.Generator, n_st: np.ndarray, pat_start: np.ndarray, st_pat: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Study dates from gaps between a patient's consecutive studies; same-day/-datetime quotas."""
    S, P = st_pat.size, n_st.size
    non_first = np.arange(S) - pat_start[st_pat] > 0
    same_dt = _quota(rng, non_first, "same_datetime")
    same_day = _quota(rng, non_first & ~same_dt, "same_day")
    u = rng.random(S)
    gap = np.where(
        u < 0.35,
        rng.integers(1, 8, S),
        np.where(u < 0.7, rng.integers(8, 121, S), rng.integers(121, 1201, S)),
    )
    gap[~non_first] = 0
    gap[same_dt | same_day] = 0
    cum = np.cumsum(gap)
    rel = cum - cum[pat_start[st_pat]]
    span = rel[pat_start + n_st - 1]
    first_day = np.floor(rng.random(P) * (36500 - span)).astype(np.int64)
    return first_day[st_pat] + rel, same_dt, same_day


def _times(
    rng: np.random.Generator, same_dt: np.ndarray, same_day: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Earliest-image time per study (ms of day, -1 when missing) and the missing mask."""
    S = same_dt.size
    ms = np.where(rng.random(S) < 0.3, 0, rng.integers(0, 1000, S))
    time_ms = rng.integers(0, 86400, S) * 1000 + ms
    missing = _quota(rng, ~(same_dt | np.roll(same_dt, -1)), "missing_time")
    # sequential fix-ups for ties and same-day ordering (small loops over rare cases)
    for i in np.flatnonzero(same_dt | same_day):
        prev = time_ms[i - 1]
        if same_dt[i]:
            time_ms[i] = prev
            continue
        delta = int(rng.integers(600, 6 * 3600)) * 1000 + int(rng.integers(0, 1000))
        room = 86_399_999 - prev
        t = prev + min(delta, room // 2)
        if t <= prev:
            missing[i] = True
        time_ms[i] = t
    time_ms[missing] = -1
    return time_ms, missing


def _relations(
    n_st: np.ndarray,
    pat_start: np.ndarray,
    st_pat: np.ndarray,
    date: np.ndarray,
    time_ms: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Strict priors, same-datetime ties and same-day-unordered pairs under the prior rules."""
    S = st_pat.size
    pair_i = np.repeat(np.arange(S), n_st[st_pat])
    pair_start = np.concatenate([[0], np.cumsum(n_st[st_pat])[:-1]])
    pair_j = pat_start[st_pat[pair_i]] + (np.arange(pair_i.size) - pair_start[pair_i])
    other = pair_i != pair_j
    di, dj = date[pair_i], date[pair_j]
    ti, tj = time_ms[pair_i], time_ms[pair_j]
    both_t = (ti >= 0) & (tj >= 0)
    earlier = other & np.where(both_t, (dj < di) | ((dj == di) & (tj < ti)), dj < di)
    n_prior = np.bincount(pair_i[earlier], minlength=S)
    same_time = np.bincount(pair_i[other & both_t & (di == dj) & (ti == tj)], minlength=S) > 0
    unordered = np.bincount(pair_i[other & ~both_t & (di == dj)], minlength=S) > 0
    return n_prior, same_time, unordered


def _views(
    rng: np.random.Generator, im_kind: np.ndarray, im_pos: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ViewPosition, view code meaning, blank-view mask and patient orientation per image."""
    NI = im_kind.size
    lat = np.where(rng.random(NI) < 0.72, "LATERAL", "LL").astype(object)
    third = _weighted(rng, THIRD_VIEWS, NI)
    rare = np.array(RARE_VIEWS, dtype=object)[rng.integers(0, len(RARE_VIEWS), NI)]
    first_view = np.array(["PA", "AP", "AP", "PA", "PA", "", "AP"], dtype=object)[im_kind]
    view = np.where(im_pos == 0, first_view, np.where(im_pos == 1, lat, third)).astype(object)
    view[(im_kind == 5)] = rare[im_kind == 5]
    view[(im_kind == 6)] = "AP"
    slots = np.flatnonzero(im_pos >= 1)
    if slots.size >= 2 * len(FORCED_VIEWS):
        for name in FORCED_VIEWS:
            if not (view == name).any():
                view[rng.choice(slots[view[slots] != name])] = name
    meaning = np.array([VIEW_MEANING.get(v, "") for v in view], dtype=object)
    blank = _quota(rng, np.ones(NI, dtype=bool), "blank_view")
    view[blank] = ""
    meaning[blank & (rng.random(NI) < 0.5)] = ""
    orient = np.where(
        rng.random(NI) < 0.85,
        np.where(((im_kind == 1) | (im_kind == 6)) & (rng.random(NI) < 0.45), "Recumbent", "Erect"),
        "",
    ).astype(object)
    return view, meaning, blank, orient


def _dims(
    rng: np.random.Generator, NI: int, dicom: bool, image_size: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Rows/Columns: nominal, or the rendered size, or 1/DICOM_SCALE for tiny DICOMs."""
    dims = np.array(DIMS)[
        rng.choice(len(DIMS), size=NI, p=np.array(DIM_WEIGHTS) / sum(DIM_WEIGHTS))
    ]
    rows, cols = dims[:, 0].copy(), dims[:, 1].copy()
    if image_size:
        # rendered images replace the DICOM pixels: Rows/Columns are the rendered size
        # (longer side = image_size, nominal aspect kept) so headers still equal the CSV
        scale = image_size / np.maximum(rows, cols)
        rows, cols = (
            np.maximum(8, np.rint(rows * scale)).astype(np.int64),
            np.maximum(8, np.rint(cols * scale)).astype(np.int64),
        )
    elif dicom:
        rows, cols = (
            np.maximum(4, np.rint(rows / DICOM_SCALE)).astype(np.int64),
            np.maximum(4, np.rint(cols / DICOM_SCALE)).astype(np.int64),
        )
    return rows, cols


def _dicom_ids(rng: np.random.Generator, NI: int) -> np.ndarray:
    """MIMIC-shaped dicom_ids: five dash-joined groups of 8 hex digits, 160 random bits."""
    hexs = rng.bytes(20 * NI).hex()
    im_dicom = np.array(
        [
            f"{hexs[k : k + 8]}-{hexs[k + 8 : k + 16]}-{hexs[k + 16 : k + 24]}-{hexs[k + 24 : k + 32]}-{hexs[k + 32 : k + 40]}"
            for k in range(0, 40 * NI, 40)
        ],
        dtype=object,
    )
    if np.unique(im_dicom).size != NI:  # pragma: no cover - 160 random bits
        raise RuntimeError("dicom_id collision")
    return im_dicom


def _image_times(
    rng: np.random.Generator,
    time_ms: np.ndarray,
    im_study: np.ndarray,
    im_pos: np.ndarray,
    n_img: np.ndarray,
    tied: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image StudyTime; a quota of multi-image studies get later images seconds later."""
    im_time = time_ms[im_study].copy()
    multi = _quota(
        rng,
        (n_img >= 2) & (time_ms >= 0) & (time_ms < 86_000_000) & ~tied,
        "multi_time_images",
    )
    bump = (im_pos >= 1) & multi[im_study]
    im_time[bump] += rng.integers(1, 300, int(bump.sum())) * 1000 + rng.integers(
        0, 1000, int(bump.sum())
    )
    return im_time, multi


def _procedures(rng: np.random.Generator, kind: np.ndarray) -> np.ndarray:
    procedure = np.empty(kind.size, dtype=object)
    for k, opts in enumerate(KIND_PROCEDURES):
        sel = np.flatnonzero(kind == k)
        if sel.size:
            procedure[sel] = _weighted(rng, opts, sel.size)
    procedure[_quota(rng, np.ones(kind.size, dtype=bool), "blank_procedure")] = ""
    return procedure


_STYLE_QUOTAS = (
    ("neither", R.NEITHER),
    ("combined", R.COMBINED),
    ("impression_only", R.IMPRESSION_ONLY),
    ("findings_only", R.FINDINGS_ONLY),
)


def _report_specs(rng: np.random.Generator, n_prior: np.ndarray) -> dict[str, np.ndarray]:
    """Per-study report layout: style, context, header spellings, empty sections, rare parts."""
    S = n_prior.size
    style = np.full(S, R.FULL, dtype=np.int64)
    for key, code in _STYLE_QUOTAS:
        style[_quota(rng, style == R.FULL, key)] = code
    ctx = rng.choice(4, size=S, p=[0.68, 0.24, 0.02, 0.06])
    has_exam = rng.random(S) < 0.41
    has_tech = np.where(has_exam, rng.random(S) < 0.75, rng.random(S) < 0.08)
    has_comp = rng.random(S) < 0.68
    specs: dict[str, np.ndarray] = {
        "style": style,
        "ctx": ctx,
        "h_exam": _spellings(rng, "examination", has_exam),
        "h_ind": _spellings(rng, "indication", (ctx == R.CTX_INDICATION) | (ctx == R.CTX_BOTH)),
        "h_hist": _spellings(rng, "history", (ctx == R.CTX_HISTORY) | (ctx == R.CTX_BOTH)),
        "h_tech": np.where(has_tech, "TECHNIQUE", "").astype(object),
        "h_comp": _spellings(rng, "comparison", has_comp),
        "h_find": _spellings(rng, "findings", (style == R.FULL) | (style == R.FINDINGS_ONLY)),
        "h_imp": _spellings(rng, "impression", (style == R.FULL) | (style == R.IMPRESSION_ONLY)),
        "empty_comp": _quota(rng, has_comp, "empty_comparison"),
        "empty_tech": _quota(rng, has_tech, "empty_technique"),
        "empty_find": _quota(rng, style == R.FULL, "empty_findings"),
        "addendum": _quota(rng, np.ones(S, dtype=bool), "addendum"),
        "notification": _quota(rng, style != R.NEITHER, "notification"),
        "hallucinate": _quota(rng, (n_prior == 0) & (style != R.NEITHER), "hallucinated_prior"),
    }
    specs["h_find"][style == R.COMBINED] = "FINDINGS AND IMPRESSION"
    specs["wet_read"] = _quota(rng, ~specs["addendum"] & (style != R.NEITHER), "wet_read")
    rec = _quota(rng, style != R.NEITHER, "recommendation")
    specs["recommendation"] = rec
    specs["h_rec"] = _spellings(rng, "recommendation", rec)
    specs["force"] = _forced_lesions(rng, style)
    return specs


def _forced_lesions(rng: np.random.Generator, style: np.ndarray) -> np.ndarray:
    """Every lesion is positive somewhere: one forced study per lesion (distinct when possible)."""
    S = style.size
    force = np.empty(S, dtype=object)
    force[:] = [() for _ in range(S)]
    pool = np.flatnonzero(style != R.NEITHER)
    if pool.size:
        picks = rng.choice(pool, size=min(pool.size, len(LESIONS)), replace=False)
        for k, les in enumerate(LESIONS):
            i = picks[k % picks.size]
            force[i] = (*force[i], les)
    return force


_COUNTED_SPECS = (
    "empty_comp",
    "empty_tech",
    "empty_find",
    "addendum",
    "wet_read",
    "notification",
    "recommendation",
    "hallucinate",
)
_HEADER_COLUMNS = ("h_exam", "h_ind", "h_hist", "h_comp", "h_find", "h_imp", "h_rec")


def _spec_varieties(specs: dict[str, np.ndarray], view: np.ndarray) -> dict[str, int]:
    """Counts of styles, rare report parts, header spellings and views."""
    var: dict[str, int] = {}
    for key, code in _STYLE_QUOTAS:
        var[key] = int((specs["style"] == code).sum())
    for key in _COUNTED_SPECS:
        var[key] = int(specs[key].sum())
    for col in _HEADER_COLUMNS:
        names, counts = np.unique(specs[col][specs[col] != ""].astype(str), return_counts=True)
        for nm, c in zip(names.tolist(), counts.tolist(), strict=True):
            var[f"header:{nm}"] = int(c)
    for name in sorted(set(view.tolist())):
        var[f"view:{name or '(blank)'}"] = int((view == name).sum())
    return var


def draw_structure(
    patients: int, seed: int, dicom: bool, image_size: int | None = None
) -> Structure:
    """Draw everything random about the root, phase by phase from one seeded Generator."""
    rng = np.random.default_rng(seed)
    P = patients
    subject_ids, woman, n_st, study_ids = _patients(rng, P)
    S = int(n_st.sum())
    pat_start = np.concatenate([[0], np.cumsum(n_st)[:-1]])
    st_pat = np.repeat(np.arange(P), n_st)
    split, test, val = _split(rng, P)
    date, same_dt, same_day = _dates(rng, n_st, pat_start, st_pat)
    time_ms, missing = _times(rng, same_dt, same_day)
    n_prior, same_time, unordered = _relations(n_st, pat_start, st_pat, date, time_ms)

    kind = rng.choice(len(KIND_WEIGHTS), size=S, p=np.array(KIND_WEIGHTS) / sum(KIND_WEIGHTS))
    n_img = np.array(KIND_IMAGES)[kind]
    NI = int(n_img.sum())
    im_study = np.repeat(np.arange(S), n_img)
    im_pos = np.arange(NI) - np.concatenate([[0], np.cumsum(n_img)[:-1]])[im_study]
    view, meaning, blank, orient = _views(rng, kind[im_study], im_pos)
    rows, cols = _dims(rng, NI, dicom, image_size)
    im_dicom = _dicom_ids(rng, NI)
    im_time, multi = _image_times(rng, time_ms, im_study, im_pos, n_img, same_time | unordered)
    procedure = _procedures(rng, kind)
    specs = _report_specs(rng, n_prior)

    var: dict[str, int] = dict(
        patients=P,
        studies=S,
        images=NI,
        same_day=int(same_day.sum()),
        same_datetime_pairs=int(same_dt.sum()),
        missing_time=int(missing.sum()),
        multi_time_images=int(multi.sum()),
        blank_view=int(blank.sum()),
        blank_procedure=int((procedure == "").sum()),
        first_studies=int((n_prior == 0).sum()),
        same_time_ambiguous=int(same_time.sum()),
        same_day_unordered=int(unordered.sum()),
        split_test_patients=int(test.sum()),
        split_validate_patients=int(val.sum()),
    )
    var.update(_spec_varieties(specs, view))
    return Structure(
        subject_ids=subject_ids,
        woman=woman,
        split=split,
        st_pat=st_pat,
        study_ids=study_ids,
        date=date,
        time_ms=time_ms,
        kind=kind,
        procedure=procedure,
        n_prior=n_prior,
        same_time=same_time,
        same_day_unordered=unordered,
        multi_time=multi,
        specs=specs,
        im_study=im_study,
        im_dicom=im_dicom,
        im_view=view,
        im_rows=rows,
        im_cols=cols,
        im_time_ms=im_time,
        im_view_meaning=meaning,
        im_orient=orient,
        varieties=var,
    )
