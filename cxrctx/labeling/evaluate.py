"""eval-labels: per-lesion precision / recall / F1 / kappa of a label run against a gold.

Gold forms: another label run (dir or Parquet, e.g. synthetic truth or a second model),
the MIMIC-CXR CheXpert/NegBio CSV (the 7 overlapping lesions; -1.0 by an explicit
option; blank = negative), or an IU/NegBio gold CSV like `openi_gld_std14.csv`
(`filename` = `CXR<uid>`, 14 columns). Only documents present in both are scored; the
counts of the others are reported, never silently folded into negatives.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import polars as pl

from cxrctx.errors import CxrctxError
from cxrctx.io import atomic_write_text, read_shards, shard_paths
from cxrctx.labeling.models import EvalReport, LesionScore
from cxrctx.vocab import LESIONS

Uncertain = Literal["positive", "negative", "ignore"]

#: MIMIC-CXR CheXpert/NegBio column → lesion (the overlap with the 14 lesions).
CHEXPERT_MAP: dict[str, str] = {
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "cardiomegaly",
    "Consolidation": "consolidation",
    "Edema": "edema",
    "Pleural Effusion": "pleural effusion",
    "Pneumonia": "pneumonia",
    "Pneumothorax": "pneumothorax",
}
#: IU / NegBio `openi_gld_std14.csv` column → lesion.
IU_MAP: dict[str, str] = {
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "cardiomegaly",
    "Effusion": "pleural effusion",
    "Infiltration": "infiltration",
    "Mass": "mass",
    "Nodule": "nodule",
    "Pneumonia": "pneumonia",
    "Pneumothorax": "pneumothorax",
    "Consolidation": "consolidation",
    "Edema": "edema",
    "Emphysema": "emphysema",
    "Fibrosis": "fibrosis",
    "Pleural_Thickening": "pleural thickening",
    "Hernia": "hernia",
}

__all__ = [
    "CHEXPERT_MAP",
    "IU_MAP",
    "EvalReport",
    "eval_labels",
    "evaluate_labels",
    "load_gold",
    "load_labels",
]


def load_labels(path: str | os.PathLike) -> pl.DataFrame:
    """Long-form labels (id, lesion, status[, location]) from a run dir, a `labels/` dir or a Parquet file."""
    p = Path(path)
    if not p.exists():
        raise CxrctxError(f"{p}: labels not found")
    if p.is_dir():
        for sub in (p / "labels", p / "truth" / "labels", p):
            if sub.is_dir() and shard_paths(sub):
                p = sub
                break
        else:
            raise CxrctxError(f"{p}: no labels/part-*.parquet")
    try:
        df = read_shards(p)
    except Exception as e:
        raise CxrctxError(f"{p}: cannot read labels ({type(e).__name__}: {str(e)[:200]})") from e
    missing = [c for c in ("id", "lesion", "status") if c not in df.columns]
    if missing:
        raise CxrctxError(f"{p}: label table lacks column(s) {', '.join(missing)}")
    cols = ["id", "lesion", "status"] + (["location"] if "location" in df.columns else [])
    return df.select(cols).with_columns(pl.col("id").cast(pl.String))


def load_gold(
    path: str | os.PathLike, *, uncertain: Uncertain = "positive"
) -> tuple[pl.DataFrame, str]:
    """Gold as a long frame (id, lesion, status[, location]) plus its kind.

    status is null where the gold is uncertain and `uncertain="ignore"` (not scored).
    """
    p = Path(path)
    if not p.exists():
        raise CxrctxError(f"{p}: gold not found")
    if p.is_dir() or p.suffix.lower() == ".parquet":
        return load_labels(p), "labels"
    if p.suffix.lower() != ".csv":
        raise CxrctxError(f"{p}: gold must be a label run, a Parquet label file, or a CSV")
    try:
        df = pl.read_csv(p, infer_schema=False)
    except Exception as e:
        raise CxrctxError(f"{p}: cannot read CSV ({type(e).__name__}: {str(e)[:200]})") from e
    cols = set(df.columns)
    if "filename" in cols and {"Effusion", "Pleural_Thickening"} <= cols:
        ids = pl.col("filename").str.strip_chars().str.replace(r"^CXR", "").alias("id")
        frames = [
            df.select(ids, pl.lit(lesion).alias("lesion"), pl.when(pl.col(col).str.strip_chars() == "1").then(pl.lit("positive")).otherwise(pl.lit("negative")).alias("status"))
            for col, lesion in IU_MAP.items()
            if col in cols
        ]  # fmt: skip
        return pl.concat(frames).sort("id", "lesion"), "iu_negbio"
    if "study_id" in cols and any(c in cols for c in CHEXPERT_MAP):
        if uncertain not in ("positive", "negative", "ignore"):
            raise CxrctxError(
                f"--uncertain must be positive, negative or ignore (got {uncertain!r})"
            )
        unc = None if uncertain == "ignore" else uncertain
        frames = []
        for col, lesion in CHEXPERT_MAP.items():
            if col not in cols:
                continue
            v = pl.col(col).str.strip_chars().cast(pl.Float64, strict=False)
            bad = df.filter(
                pl.col(col).is_not_null() & (pl.col(col).str.strip_chars() != "") & v.is_null()
            )
            if bad.height:
                raise CxrctxError(f"{p}: column {col!r} has a non-numeric value {bad[col][0]!r}")
            status = (
                pl.when(v == 1.0)
                .then(pl.lit("positive"))
                .when(v == -1.0)
                .then(pl.lit(unc, dtype=pl.String))
                .otherwise(pl.lit("negative"))
            )
            frames.append(
                df.select(
                    pl.col("study_id").str.strip_chars().alias("id"),
                    pl.lit(lesion).alias("lesion"),
                    status.alias("status"),
                )
            )
        return pl.concat(frames).sort("id", "lesion"), f"chexpert(uncertain={uncertain})"
    raise CxrctxError(
        f"{p}: unrecognised gold CSV (expected MIMIC CheXpert/NegBio columns with study_id, "
        "or an IU gold with filename + Effusion ... Pleural_Thickening)"
    )


def _div(a: float, b: float) -> float | None:
    return a / b if b else None


def _kappa(tp: int, fp: int, fn: int, tn: int) -> float | None:
    n = tp + fp + fn + tn
    if n == 0:
        return None
    po = (tp + tn) / n
    pe = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / (n * n)
    if pe == 1.0:
        return 1.0 if po == 1.0 else None
    return (po - pe) / (1 - pe)


def evaluate_labels(
    pred: pl.DataFrame,
    gold: pl.DataFrame,
    *,
    lesions: list[str] | tuple[str, ...] | None = None,
    gold_kind: str = "labels",
    options: dict | None = None,
) -> EvalReport:
    """Score long-form `pred` against long-form `gold` (both: id, lesion, status[, location])."""
    for name, df in (("pred", pred), ("gold", gold)):
        missing = [c for c in ("id", "lesion", "status") if c not in df.columns]
        if missing:
            raise CxrctxError(f"{name} labels lack column(s) {', '.join(missing)}")
    pred = pred.with_columns(pl.col("id").cast(pl.String))
    gold = gold.with_columns(pl.col("id").cast(pl.String))
    if lesions is None:
        present = set(gold["lesion"].unique().to_list())
        lesions = [n for n in LESIONS if n in present]
    pred_ids = set(pred["id"].unique().to_list())
    gold_ids = set(gold["id"].unique().to_list())
    both = pred_ids & gold_ids
    has_loc = "location" in gold.columns and "location" in pred.columns
    p = pred.filter(pl.col("id").is_in(list(both))).select(
        "id",
        "lesion",
        pl.col("status").alias("p_status"),
        *([pl.col("location").alias("p_loc")] if has_loc else []),
    )
    g = gold.filter(pl.col("id").is_in(list(both)) & pl.col("status").is_not_null()).select(
        "id",
        "lesion",
        pl.col("status").alias("g_status"),
        *([pl.col("location").alias("g_loc")] if has_loc else []),
    )
    j = g.join(p, on=["id", "lesion"], how="left").with_columns(
        pl.col("p_status").fill_null("negative")
    )
    scores: list[LesionScore] = []
    T = F = N = 0
    loc_ok = loc_n = 0
    for lesion in lesions:
        s = j.filter(pl.col("lesion") == lesion)
        gp, pp = s["g_status"] == "positive", s["p_status"] == "positive"
        tp, fp = int((gp & pp).sum()), int((~gp & pp).sum())
        fn, tn = int((gp & ~pp).sum()), int((~gp & ~pp).sum())
        T, F, N = T + tp, F + fp, N + fn
        support = tp + fn
        prec = _div(tp, tp + fp)
        if prec is None and support:
            prec = 0.0
        rec = _div(tp, support)
        f1 = (
            None
            if prec is None or rec is None
            else (0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec))
        )
        ln = la = 0
        if has_loc:
            t = s.filter(
                (pl.col("g_status") == "positive")
                & (pl.col("p_status") == "positive")
                & pl.col("g_loc").is_not_null()
            )
            ln, la = t.height, int((t["g_loc"] == t["p_loc"]).sum())
            loc_n, loc_ok = loc_n + ln, loc_ok + la
        scores.append(
            LesionScore(
                lesion=lesion, tp=tp, fp=fp, fn=fn, tn=tn, support=support, precision=prec, recall=rec, f1=f1,
                agreement=(tp + tn) / s.height if s.height else 0.0, kappa=_kappa(tp, fp, fn, tn),
                location_n=ln, location_accuracy=_div(la, ln),
            )
        )  # fmt: skip
    mp, mr = _div(T, T + F), _div(T, T + N)
    if mp is None and T + N:  # nothing predicted positive but gold has positives: P = F1 = 0
        mp = 0.0
    mf = None if mp is None or mr is None else (0.0 if mp + mr == 0 else 2 * mp * mr / (mp + mr))
    sup = [s for s in scores if s.support > 0]

    def _mean(vals: list[float | None]) -> float | None:
        v = [x for x in vals if x is not None]
        return sum(v) / len(v) if v else None

    return EvalReport(
        gold_kind=gold_kind,
        n_docs=len(both),
        n_pred_only=len(pred_ids - gold_ids),
        n_gold_only=len(gold_ids - pred_ids),
        lesions=scores,
        micro_precision=mp,
        micro_recall=mr,
        micro_f1=mf,
        macro_precision=_mean([s.precision for s in sup]),
        macro_recall=_mean([s.recall for s in sup]),
        macro_f1=_mean([s.f1 for s in sup]),
        location_accuracy=_div(loc_ok, loc_n),
        options=options or {},
    )


def eval_labels(
    labels: str | os.PathLike,
    against: str | os.PathLike,
    *,
    uncertain: Uncertain = "positive",
    json_path: str | os.PathLike | None = None,
    png_path: str | os.PathLike | None = None,
) -> EvalReport:
    """Load both sides, score, and write the optional JSON report and PNG chart."""
    if png_path is not None:
        _need_matplotlib()
    pred = load_labels(labels)
    gold, kind = load_gold(against, uncertain=uncertain)
    report = evaluate_labels(pred, gold, gold_kind=kind, options={"uncertain": uncertain})
    if report.n_docs == 0:
        raise CxrctxError(f"{against}: no document id in common with {labels}")
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(report.model_dump(mode="json"), indent=2) + "\n")
    if png_path is not None:
        plot_report(report, png_path)
    return report


def _need_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise CxrctxError("--png needs matplotlib: pip install 'cxrctx[plot]'") from e


def plot_report(report: EvalReport, path: str | os.PathLike) -> None:
    """Grouped bars of precision / recall / F1 per lesion (support in the labels)."""
    _need_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report.lesions
    x = list(range(len(rows)))
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(rows) + 2), 4.5), dpi=100)
    w = 0.27
    for k, (name, attr) in enumerate(
        (("precision", "precision"), ("recall", "recall"), ("F1", "f1"))
    ):
        ax.bar([i + (k - 1) * w for i in x], [getattr(r, attr) or 0.0 for r in rows], w, label=name)
    ax.set_xticks(
        x, [f"{r.lesion}\n(n={r.support})" for r in rows], rotation=45, ha="right", fontsize=8
    )
    ax.set_ylim(0, 1.05)
    mf = "n/a" if report.micro_f1 is None else f"{report.micro_f1:.3f}"
    Mf = "n/a" if report.macro_f1 is None else f"{report.macro_f1:.3f}"
    ax.set_title(
        f"labels vs {report.gold_kind}: micro-F1 {mf}, macro-F1 {Mf}, {report.n_docs} docs",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, metadata={"Software": None})
    plt.close(fig)
    os.replace(tmp, path)


def report_table(report: EvalReport, title: str | None = None):  # -> rich.table.Table
    """A rich table of the report (per lesion, then micro / macro rows)."""
    from rich.table import Table

    def f(x: float | None) -> str:
        return "—" if x is None else f"{x:.3f}"

    has_loc = any(s.location_n for s in report.lesions)
    t = Table(title=title or f"labels vs {report.gold_kind} ({report.n_docs} documents)")
    for c in ("lesion", "support", "tp", "fp", "fn", "precision", "recall", "F1", "kappa", "agree"):
        t.add_column(c, justify="left" if c == "lesion" else "right")
    if has_loc:
        t.add_column("loc acc", justify="right")
    for s in report.lesions:
        row = [
            s.lesion,
            str(s.support),
            str(s.tp),
            str(s.fp),
            str(s.fn),
            f(s.precision),
            f(s.recall),
            f(s.f1),
            f(s.kappa),
            f(s.agreement),
        ]
        if has_loc:
            row.append(f(s.location_accuracy) + (f" (n={s.location_n})" if s.location_n else ""))
        t.add_row(*row)
    sup = sum(s.support for s in report.lesions)
    tp, fp, fn = (sum(getattr(s, a) for s in report.lesions) for a in ("tp", "fp", "fn"))
    t.add_section()
    t.add_row(
        "micro",
        str(sup),
        str(tp),
        str(fp),
        str(fn),
        f(report.micro_precision),
        f(report.micro_recall),
        f(report.micro_f1),
        "",
        "",
        *([f(report.location_accuracy)] if has_loc else []),
    )
    t.add_row(
        "macro",
        "",
        "",
        "",
        "",
        f(report.macro_precision),
        f(report.macro_recall),
        f(report.macro_f1),
        "",
        "",
        *([""] if has_loc else []),
    )
    return t
