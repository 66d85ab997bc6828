"""eval-labels: per-lesion precision / recall / F1 / kappa of a label run against a gold.

Gold forms: another label run (dir or Parquet, e.g. synthetic truth or a second model),
the MIMIC-CXR CheXpert/NegBio CSV, plain or gzipped as MIMIC ships it (the 7 overlapping
lesions; -1.0 by an explicit option; blank = negative), or an IU/NegBio gold CSV like
`openi_gld_std14.csv` (`filename` = `CXR<uid>`, 14 columns). Only documents present in
both are scored; the counts of the others are reported, never silently folded into
negatives.

One set of scoring rules (`prf`) serves the point estimates and the bootstrap: false
positives on a lesion without gold support score precision 0 and F1 0 and stay in the
macro average (listed in `fp_without_support`); undefined values (and an undefined kappa)
are None, never a flattering 1.0. Bootstrap intervals resample documents.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import warnings
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from cxrctx.errors import CxrctxError
from cxrctx.io import atomic_write_text, read_shards, shard_paths
from cxrctx.labeling.models import BootstrapCI, EvalReport, Interval, LesionScore
from cxrctx.labeling.policy import as_binary, policy_of
from cxrctx.vocab import LESIONS


class Uncertain(str, Enum):
    """How a CheXpert/NegBio -1.0 (uncertain) gold value is scored."""

    positive = "positive"
    negative = "negative"
    ignore = "ignore"


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


def _read_csv(p: Path) -> pl.DataFrame:
    """A CSV, or a gzipped one (MIMIC ships `mimic-cxr-2.0.0-chexpert.csv.gz`), all strings."""
    try:
        if p.name.lower().endswith(".gz"):
            with gzip.open(p, "rb") as f:
                return pl.read_csv(io.BytesIO(f.read()), infer_schema=False)
        return pl.read_csv(p, infer_schema=False)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise CxrctxError(f"{p}: cannot read ({type(e).__name__}: {str(e)[:200]})") from e
    except Exception as e:
        raise CxrctxError(f"{p}: cannot read CSV ({type(e).__name__}: {str(e)[:200]})") from e


def load_gold(
    path: str | os.PathLike, *, uncertain: Uncertain | str = Uncertain.positive
) -> tuple[pl.DataFrame, str]:
    """Gold as a long frame (id, lesion, status[, location]) plus its kind.

    status is null where the gold is uncertain and `uncertain="ignore"` (not scored).
    """
    p = Path(path)
    if not p.exists():
        raise CxrctxError(f"{p}: gold not found")
    if p.is_dir() or p.suffix.lower() == ".parquet":
        return load_labels(p), "labels"
    if not p.name.lower().endswith((".csv", ".csv.gz")):
        raise CxrctxError(
            f"{p}: gold must be a label run, a Parquet label file, or a CSV (.csv or .csv.gz)"
        )
    df = _read_csv(p)
    cols = set(df.columns)
    if "filename" in cols and {"Effusion", "Pleural_Thickening"} <= cols:
        ids = pl.col("filename").str.strip_chars().str.replace(r"^CXR", "").alias("id")
        frames = [
            df.select(
                ids,
                pl.lit(lesion).alias("lesion"),
                pl.when(pl.col(col).str.strip_chars() == "1")
                .then(pl.lit("positive"))
                .otherwise(pl.lit("negative"))
                .alias("status"),
            )
            for col, lesion in IU_MAP.items()
            if col in cols
        ]
        return pl.concat(frames).sort("id", "lesion"), "iu_negbio"
    if "study_id" in cols and any(c in cols for c in CHEXPERT_MAP):
        try:
            uncertain = Uncertain(uncertain)
        except ValueError:
            raise CxrctxError(
                f"--uncertain must be positive, negative or ignore (got {uncertain!r})"
            ) from None
        unc = None if uncertain is Uncertain.ignore else uncertain.value
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
        return pl.concat(frames).sort("id", "lesion"), f"chexpert(uncertain={uncertain.value})"
    raise CxrctxError(
        f"{p}: unrecognised gold CSV (expected MIMIC CheXpert/NegBio columns with study_id, "
        "or an IU gold with filename + Effusion ... Pleural_Thickening)"
    )


def _div(a: float, b: float) -> float | None:
    return a / b if b else None


def _kappa(tp: int, fp: int, fn: int, tn: int) -> float | None:
    """Cohen's kappa of status; None when undefined (chance agreement 1: both sides use a
    single class, e.g. no positive anywhere), never a made-up 1.0."""
    n = tp + fp + fn + tn
    if n == 0:
        return None
    po = (tp + tn) / n
    pe = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / (n * n)
    if pe >= 1.0:
        return None
    return (po - pe) / (1 - pe)


def prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, ...]:
    """Precision, recall, F1 (NaN = undefined), elementwise, with one set of rules:
    nothing predicted but gold positives → P = 0; no gold positive → R undefined; false
    positives without gold support → P = 0 and F1 = 0 (they count, they do not vanish)."""
    tp, fp, fn = (np.asarray(x, dtype=float) for x in (tp, fp, fn))
    pp, sup = tp + fp, tp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(pp > 0, tp / pp, np.where(sup > 0, 0.0, np.nan))
        r = np.where(sup > 0, tp / sup, np.nan)
        f = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    f = np.where(np.isnan(p), np.nan, np.where(np.isnan(r), np.where(fp > 0, 0.0, np.nan), f))
    return p, r, f


def _macro(p: np.ndarray, r: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, ...]:
    """Means over the last axis, over lesions whose F1 is defined (support or predictions)."""
    inc = ~np.isnan(f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return (
            np.nanmean(np.where(inc, p, np.nan), axis=-1),
            np.nanmean(np.where(inc, r, np.nan), axis=-1),
            np.nanmean(f, axis=-1),
        )


def _opt(x: Any) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


def _joined(pred: pl.DataFrame, gold: pl.DataFrame, both: set[str], has_loc: bool) -> pl.DataFrame:
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
    gp, pp = pl.col("g_status") == "positive", pl.col("p_status") == "positive"
    j = j.with_columns(
        (gp & pp).cast(pl.Int64).alias("tp"),
        (~gp & pp).cast(pl.Int64).alias("fp"),
        (gp & ~pp).cast(pl.Int64).alias("fn"),
        (~gp & ~pp).cast(pl.Int64).alias("tn"),
    )
    if has_loc:
        loc = (gp & pp & pl.col("g_loc").is_not_null()).fill_null(False)
        j = j.with_columns(
            loc.cast(pl.Int64).alias("loc_n"),
            (loc & (pl.col("g_loc") == pl.col("p_loc")))
            .fill_null(False)
            .cast(pl.Int64)
            .alias("loc_ok"),
        )
    else:
        j = j.with_columns(pl.lit(0).alias("loc_n"), pl.lit(0).alias("loc_ok"))
    return j


def evaluate_labels(
    pred: pl.DataFrame,
    gold: pl.DataFrame,
    *,
    lesions: list[str] | tuple[str, ...] | None = None,
    gold_kind: str = "labels",
    options: dict | None = None,
    n_boot: int = 0,
    seed: int = 0,
) -> EvalReport:
    """Score long-form `pred` against long-form `gold` (both: id, lesion, status[, location]).

    `n_boot` > 0 adds percentile bootstrap 95 % intervals (documents resampled with
    replacement, `seed` fixed so the same inputs give the same intervals).
    """
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
    j = _joined(pred, gold, both, has_loc)
    agg = (
        j.group_by("lesion")
        .agg(pl.col("tp", "fp", "fn", "tn", "loc_n", "loc_ok").sum())
        .rows_by_key("lesion", named=True, unique=True)
    )
    zero = dict.fromkeys(("tp", "fp", "fn", "tn", "loc_n", "loc_ok"), 0)
    c = {les: agg.get(les, zero) for les in lesions}
    tp, fp, fn = (np.array([c[les][k] for les in lesions]) for k in ("tp", "fp", "fn"))
    p, r, f = prf(tp, fp, fn)
    scores = [
        LesionScore(
            lesion=les,
            tp=x["tp"],
            fp=x["fp"],
            fn=x["fn"],
            tn=x["tn"],
            support=x["tp"] + x["fn"],
            precision=_opt(p[i]),
            recall=_opt(r[i]),
            f1=_opt(f[i]),
            agreement=(x["tp"] + x["tn"]) / n
            if (n := x["tp"] + x["fp"] + x["fn"] + x["tn"])
            else 0.0,
            kappa=_kappa(x["tp"], x["fp"], x["fn"], x["tn"]),
            location_n=x["loc_n"],
            location_accuracy=_div(x["loc_ok"], x["loc_n"]),
        )
        for i, (les, x) in enumerate(c.items())
    ]
    mp, mr, mf = prf(tp.sum(), fp.sum(), fn.sum())
    Mp, Mr, Mf = _macro(p, r, f)
    loc_n, loc_ok = sum(x["loc_n"] for x in c.values()), sum(x["loc_ok"] for x in c.values())
    return EvalReport(
        gold_kind=gold_kind,
        n_docs=len(both),
        n_pred_only=len(pred_ids - gold_ids),
        n_gold_only=len(gold_ids - pred_ids),
        lesions=scores,
        micro_precision=_opt(mp),
        micro_recall=_opt(mr),
        micro_f1=_opt(mf),
        macro_precision=_opt(Mp),
        macro_recall=_opt(Mr),
        macro_f1=_opt(Mf),
        macro_lesions=[s.lesion for s in scores if s.f1 is not None],
        fp_without_support={s.lesion: s.fp for s in scores if s.support == 0 and s.fp > 0},
        location_accuracy=_div(loc_ok, loc_n),
        location_confusion=_confusion(j) if has_loc else {},
        ci=bootstrap_ci(j, list(lesions), n_boot, seed) if n_boot > 0 and both else None,
        options=options or {},
    )


def _confusion(j: pl.DataFrame) -> dict[str, dict[str, int]]:
    t = j.filter(pl.col("loc_n") == 1).group_by("g_loc", "p_loc").len()
    out: dict[str, dict[str, int]] = {}
    for g, p_, n in t.sort("g_loc", "p_loc").iter_rows():
        out.setdefault(str(g), {})[str(p_)] = int(n)
    return out


def bootstrap_ci(j: pl.DataFrame, lesions: list[str], n_boot: int, seed: int) -> BootstrapCI:
    """Percentile 95 % intervals of micro/macro P/R/F1, per-lesion P/R/F1 and location
    accuracy, resampling documents (`j`: one row per scored document × lesion)."""
    ids = j["id"].unique().sort().to_list()
    di = {d: i for i, d in enumerate(ids)}
    li = {les: k for k, les in enumerate(lesions)}
    sub = j.filter(pl.col("lesion").is_in(lesions))
    rows = np.array([di[d] for d in sub["id"].to_list()], dtype=np.int64)
    cols = np.array([li[x] for x in sub["lesion"].to_list()], dtype=np.int64)
    n, L = len(ids), len(lesions)
    mats = {}
    for k in ("tp", "fp", "fn"):
        m = np.zeros((n, L))
        np.add.at(m, (rows, cols), sub[k].to_numpy())
        mats[k] = m
    loc_n = np.bincount(rows, weights=sub["loc_n"].to_numpy(), minlength=n)
    loc_ok = np.bincount(rows, weights=sub["loc_ok"].to_numpy(), minlength=n)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[np.ndarray]] = {}
    block = max(1, 20_000_000 // max(1, n))
    for start in range(0, n_boot, block):
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=min(block, n_boot - start)).astype(float)
        tp, fp, fn = (w @ mats[k] for k in ("tp", "fp", "fn"))
        p, r, f = prf(tp, fp, fn)
        stats = dict(
            zip(
                ("micro_precision", "micro_recall", "micro_f1"),
                prf(tp.sum(1), fp.sum(1), fn.sum(1)),
                strict=True,
            )
        )
        stats.update(
            zip(("macro_precision", "macro_recall", "macro_f1"), _macro(p, r, f), strict=True)
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            stats["location_accuracy"] = (w @ loc_ok) / (w @ loc_n)
        for col, les in enumerate(lesions):
            stats.update(
                {f"{les}|precision": p[:, col], f"{les}|recall": r[:, col], f"{les}|f1": f[:, col]}
            )
        for key, v in stats.items():
            draws.setdefault(key, []).append(v)
    iv = {key: _interval(np.concatenate(v)) for key, v in draws.items()}
    return BootstrapCI(
        n_boot=n_boot,
        seed=seed,
        overall={k: v for k, v in iv.items() if "|" not in k},
        lesions={
            les: {m: iv[f"{les}|{m}"] for m in ("precision", "recall", "f1")} for les in lesions
        },
    )


def _interval(x: np.ndarray) -> Interval:
    x = x[~np.isnan(x)]
    if x.size == 0:
        return Interval(low=None, high=None)
    lo, hi = np.percentile(x, [2.5, 97.5])
    return Interval(low=float(lo), high=float(hi))


def eval_labels(
    labels: str | os.PathLike,
    against: str | os.PathLike,
    *,
    uncertain: Uncertain | str = Uncertain.positive,
    json_path: str | os.PathLike | None = None,
    png_path: str | os.PathLike | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> EvalReport:
    """Load both sides, score (with bootstrap CIs unless `n_boot` is 0), and write the
    optional JSON report and PNG chart."""
    if png_path is not None:
        _need_matplotlib()
    if n_boot < 0:
        raise CxrctxError(f"--bootstrap must be >= 0 (got {n_boot})")
    unc = (
        Uncertain(uncertain).value if uncertain in set(Uncertain._value2member_map_) else uncertain
    )
    pred = load_labels(labels)
    gold, kind = load_gold(against, uncertain=uncertain)
    pred, gold, opts = _uncertain_pred(pred, gold, labels, unc)
    report = evaluate_labels(
        pred, gold, gold_kind=kind, options={"uncertain": unc, **opts}, n_boot=n_boot, seed=seed
    )
    if report.n_docs == 0:
        raise CxrctxError(f"{against}: no document id in common with {labels}")
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(report.model_dump(mode="json"), indent=2) + "\n")
    if png_path is not None:
        plot_report(report, png_path)
    return report


def _uncertain_pred(
    pred: pl.DataFrame, gold: pl.DataFrame, labels: str | os.PathLike, unc: str
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """Predicted `uncertain` rows (a run labeled with `--uncertain keep`) scored like the
    gold's: as positive / negative, or (ignore) left out on both sides. The run's policy
    (its manifest's config.uncertain) is reported with the count."""

    mpath = Path(labels) / "manifest.json"
    cfg = json.loads(mpath.read_text()).get("config") if mpath.is_file() else None
    opts: dict[str, Any] = {"labels_uncertain_policy": policy_of(cfg)}
    u = pred.filter(pl.col("status") == "uncertain")
    opts["labels_uncertain_rows"] = u.height
    if u.height == 0:
        return pred, gold, opts
    if unc in ("positive", "negative"):
        return as_binary(pred, unc), gold, opts
    drop = u.select("id", "lesion")
    return (
        pred.join(drop, on=["id", "lesion"], how="anti"),
        gold.join(drop, on=["id", "lesion"], how="anti"),
        opts,
    )


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
