"""`evaluate`: generated reports vs reference reports (CLALA-Net paper, "Evaluation strategy").

- Lesion P/R/F1 (the paper's lesion evaluation): both texts are labeled with the lesion
  labeler (`cxrctx.labeling.label_documents` through an LLM backend) — or the reference
  side comes from an existing label directory (e.g. label-lesions output, or a synthetic
  root's `truth/`). Without any backend a negation-aware *keyword* labeler stands in; the
  output says so, because it is not the paper's method. Scores come from
  `cxrctx.labeling.evaluate_labels` (positive class, per lesion, micro and macro). An
  empty generated report asserts nothing: all 14 negative, without an LLM call.
- ROUGE-L: LCS-based F-measure with β = 1.2 (as in pycocoevalcap, which most report-
  generation papers use), lower-cased word tokens, averaged over studies.
- METEOR: computed only when NLTK and its WordNet data are installed locally (nothing is
  downloaded); otherwise null with the reason in `notes`.
- GREEN and F1-RadGraph need their own models and are not computed (said in `notes`).
- LLM consistency judge: four criteria scored 1–5 (`prompts/consistency_judge/`); the
  report gives each criterion's mean and the total (sum of the four means, out of 20, as
  in the paper's Table 2).

The reference text is the record's findings and impression (configurable) — which
sections were used is part of the output.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from cxrctx.errors import CxrctxError
from cxrctx.io import atomic_write_text, read_shards, shard_paths, write_parquet
from cxrctx.reportgen.tasks import CRITERIA
from cxrctx.vocab import LESIONS

log = logging.getLogger(__name__)

_TOK = re.compile(r"[a-z0-9]+")


class JudgeScores(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(description="Studies judged successfully")
    failures: int
    backend: str
    model: str
    prompt_sha256: str
    clinical_accuracy: float | None
    findings_completeness: float | None
    linguistic_quality: float | None
    report_structure: float | None
    total: float | None = Field(
        description="Sum of the four criterion means (out of 20), as in the paper's Table 2"
    )
    mean: float | None = Field(description="Mean of the four criterion means (1–5)")


class EvaluationReport(BaseModel):
    """`evaluate`'s JSON output."""

    model_config = ConfigDict(extra="forbid")

    n_generated: int
    n_pairs: int = Field(description="Generated reports with a non-empty reference text")
    n_missing_reference: int
    reference_sections: list[str]
    labeler: str = Field(
        description="'llm:<backend>/<model>' or 'keyword' (not the paper's LLM labeler)"
    )
    reference_labels: str = Field(
        description="Label directory used for the reference side, or the labeler"
    )
    lesion: dict[str, Any] | None = Field(
        description="cxrctx.labeling EvalReport: per-lesion and averaged P/R/F1"
    )
    rouge_l: float | None
    meteor: float | None
    judge: JudgeScores | None
    notes: list[str]


# ----------------------------------------------------------------------------- text metrics


def tokens(text: str) -> list[str]:
    return _TOK.findall(text.lower())


def _lcs(a: list[str], b: list[str]) -> int:
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def rouge_l(candidate: str, reference: str, beta: float = 1.2) -> float:
    """ROUGE-L F-measure (Lin 2004) with recall weighted by beta (pycocoevalcap uses 1.2)."""
    c, r = tokens(candidate), tokens(reference)
    lcs = _lcs(c, r)
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(c), lcs / len(r)
    return (1 + beta**2) * p * rec / (rec + beta**2 * p)


def meteor_scores(pairs: list[tuple[str, str]]) -> tuple[float | None, str | None]:
    """Mean METEOR via NLTK when its WordNet data is present locally; else (None, why)."""
    try:
        import nltk
        from nltk.translate.meteor_score import meteor_score

        nltk.data.find("corpora/wordnet")
    except ImportError:
        return (
            None,
            "METEOR not computed: NLTK is not installed (pip install nltk and its WordNet data to enable it)",
        )
    except LookupError:
        return (
            None,
            "METEOR not computed: NLTK's WordNet data is not installed and is never downloaded at run time",
        )
    vals = [meteor_score([tokens(r)], tokens(c)) for c, r in pairs]
    return (sum(vals) / len(vals) if vals else None), None


# ----------------------------------------------------------------------------- keyword labeler

_NEG_CUES = re.compile(r"\b(no|without|negative for|free of|resolved|clear of|not)\b", re.I)
_KEYWORDS = {
    "cardiomegaly": (
        r"cardiomegaly",
        r"(heart|cardiac silhouette)[^.]*\benlarge",
        r"enlarge[^.]*\b(heart|cardiac)",
    ),
    "emphysema": (r"emphysema", r"hyperinflat"),
    "pleural effusion": (r"effusion",),
    "hernia": (r"hernia",),
    "nodule": (r"nodul",),
    "pneumothorax": (r"pneumothora",),
    "atelectasis": (r"atelecta",),
    "pleural thickening": (r"pleural thickening",),
    "mass": (r"\bmass(es)?\b",),
    "edema": (r"edema",),
    "consolidation": (r"consolidat",),
    "infiltration": (r"infiltrat",),
    "fibrosis": (r"fibros", r"fibrotic"),
    "pneumonia": (r"pneumonia",),
}


def keyword_labels(docs: pl.DataFrame) -> pl.DataFrame:
    """A negation-aware keyword labeler (fallback when no LLM backend is configured).

    A lesion is positive when a sentence names it and no negation cue precedes the mention.
    Location: left/right/bilateral words in that sentence.
    """
    rows = []
    for id_, text in docs.select("id", "text").iter_rows():
        sentences = re.split(r"(?<=[.!?])\s+", " ".join((text or "").split()))
        for les in LESIONS:
            status, loc = "negative", "not mentioned"
            for s in sentences:
                low = s.lower()
                for pat in _KEYWORDS[les]:
                    m = re.search(pat, low)
                    if m and not _NEG_CUES.search(low[: m.start()]):
                        status = "positive"
                        loc = (
                            "bilateral"
                            if re.search(r"\b(bilateral|both|bibasilar)\b", low)
                            else "left"
                            if "left" in low
                            else "right"
                            if "right" in low
                            else "not mentioned"
                        )
                        break
                if status == "positive":
                    break
            rows.append({"id": str(id_), "lesion": les, "status": status, "location": loc})
    return pl.DataFrame(
        rows,
        schema={"id": pl.String, "lesion": pl.String, "status": pl.String, "location": pl.String},
    )


# ----------------------------------------------------------------------------- judge


def run_judge(
    engine: Any,
    pairs: list[tuple[str, str, str]],
    sampling: Any = None,
    cache_dir: Any = None,
    executor: Any = None,
) -> tuple[JudgeScores, list[dict]]:
    from cxrctx.reportgen.tasks import judge_reports

    per, failed, prompt_sha = judge_reports(
        engine, pairs, sampling=sampling, cache_dir=cache_dir, executor=executor
    )
    failures = len(failed)
    for key, reason in failed:
        log.debug("judge failed for %s: %s", key, reason)
    means = {c: (sum(p[c] for p in per) / len(per) if per else None) for c in CRITERIA}
    total = sum(means.values()) if per else None  # type: ignore[arg-type]
    return (
        JudgeScores(
            n=len(per),
            failures=failures,
            backend=str(getattr(engine, "backend", "?")),
            model=str(getattr(engine, "model", "?")),
            prompt_sha256=prompt_sha,
            total=total,
            mean=total / 4 if total is not None else None,
            **means,
        ),
        per,
    )


# ----------------------------------------------------------------------------- main


def _read_generated(path: str | os.PathLike) -> pl.DataFrame:
    p = Path(path)
    if (p / "generated").is_dir():
        p = p / "generated"
    if not shard_paths(p):
        raise CxrctxError(f"{path}: no generated reports (generated/part-*.parquet) found")
    df = read_shards(p)
    if not {"study_id", "report"} <= set(df.columns):
        raise CxrctxError(f"{p}: generated shards lack study_id/report columns")
    return df


def _read_reference(path: str | os.PathLike, sections: list[str]) -> pl.DataFrame:
    p = Path(path)
    if (p / "records").is_dir():
        p = p / "records"
    if not shard_paths(p):
        raise CxrctxError(f"{path}: no records shards (part-*.parquet) found")
    df = read_shards(p)
    bad = [s for s in sections if s not in df.columns]
    if bad:
        raise CxrctxError(f"{p}: records lack section column(s) {bad}")
    text = pl.concat_str(
        [pl.col(s).fill_null("") for s in sections], separator=" "
    ).str.strip_chars()
    return df.select("study_id", text.alias("reference"))


def evaluate(
    generated: str | os.PathLike,
    *,
    reference: str | os.PathLike,
    reference_labels: str | os.PathLike | None = None,
    labeler_engine: Any = None,
    judge_engine: Any = None,
    sections: tuple[str, ...] = ("findings", "impression"),
    out: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    executor: Any = None,
) -> EvaluationReport:
    """Score generated reports against reference records; writes OUT/evaluation.json (+ per-study table)."""
    from cxrctx.labeling import evaluate_labels, label_documents, load_labels

    sections = tuple(sections)
    for s in sections:
        if s not in ("findings", "impression"):
            raise CxrctxError(f"reference section must be findings or impression (got {s!r})")
    gen = _read_generated(generated)
    ref = _read_reference(reference, list(sections))
    joined = gen.select("study_id", "report").join(ref, on="study_id", how="left")
    have = joined.filter(pl.col("reference").is_not_null() & (pl.col("reference") != ""))
    notes: list[str] = ["GREEN and F1-RadGraph are not computed (they need their own models)."]
    missing_ref = joined.height - have.height
    if missing_ref:
        notes.append(
            f"{missing_ref} generated report(s) have no reference {'+'.join(sections)} text and are not scored."
        )
    if have.height == 0:
        raise CxrctxError(
            f"{reference}: none of the {gen.height} generated studies has a reference text"
        )
    pairs = [
        (str(s), g or "", r)
        for s, g, r in have.select("study_id", "report", "reference").iter_rows()
    ]
    rl = [rouge_l(g, r) for _, g, r in pairs]
    met, why = meteor_scores([(g, r) for _, g, r in pairs])
    if why:
        notes.append(why)

    # lesion P/R/F1
    gen_docs = pl.DataFrame({"id": [p[0] for p in pairs], "text": [p[1] for p in pairs]})
    ref_docs = pl.DataFrame({"id": [p[0] for p in pairs], "text": [p[2] for p in pairs]})
    if labeler_engine is not None:
        labeler = (
            f"llm:{getattr(labeler_engine, 'backend', '?')}/{getattr(labeler_engine, 'model', '?')}"
        )
        nonempty = gen_docs.filter(pl.col("text").str.strip_chars() != "")
        empty = gen_docs.filter(pl.col("text").str.strip_chars() == "")
        # an empty generated report asserts no lesion: all 14 negative, no LLM call
        pred = keyword_labels(empty)
        if nonempty.height:
            gen_res = label_documents(
                nonempty, labeler_engine, cache_dir=cache_dir, executor=executor
            )
            pred = pl.concat([gen_res.labels.select(pred.columns), pred])
            if gen_res.failures.height:
                notes.append(
                    f"labeler failed on {gen_res.failures.height} generated report(s); they are not scored"
                )
        if empty.height:
            notes.append(f"{empty.height} generated report(s) are empty and count as all-negative")
    else:
        labeler = "keyword"
        notes.append(
            "lesion labels of generated reports come from the keyword labeler (no LLM backend given); not the paper's LLM labeler."
        )
        pred = keyword_labels(gen_docs)
    if reference_labels is not None:
        gold = load_labels(reference_labels)
        ids = set(ref_docs["id"].to_list())
        gold = gold.filter(pl.col("id").is_in(list(ids)))
        if gold.height == 0:
            raise CxrctxError(
                f"{reference_labels}: the reference labels cover none of the {len(ids)} evaluated studies"
            )
        ref_label_src = str(reference_labels)
    elif labeler_engine is not None:
        ref_res = label_documents(ref_docs, labeler_engine, cache_dir=cache_dir, executor=executor)
        gold, ref_label_src = ref_res.labels, labeler
    else:
        gold, ref_label_src = keyword_labels(ref_docs), "keyword"
    cols = ["id", "lesion", "status"] + (
        ["location"] if "location" in pred.columns and "location" in gold.columns else []
    )
    lesion = evaluate_labels(
        pred.select(cols), gold.select(cols), lesions=list(LESIONS), gold_kind=ref_label_src
    )

    judge = None
    per_judge: list[dict] = []
    if judge_engine is not None:
        judge, per_judge = run_judge(judge_engine, pairs, cache_dir=cache_dir, executor=executor)
        if judge.failures:
            notes.append(f"the judge's answer was unusable for {judge.failures} stud(ies)")
    report = EvaluationReport(
        n_generated=gen.height,
        n_pairs=len(pairs),
        n_missing_reference=missing_ref,
        reference_sections=list(sections),
        labeler=labeler,
        reference_labels=ref_label_src,
        lesion=lesion.model_dump(mode="json"),
        rouge_l=sum(rl) / len(rl),
        meteor=met,
        judge=judge,
        notes=notes,
    )
    if out is not None:
        o = Path(out)
        o.mkdir(parents=True, exist_ok=True)
        atomic_write_text(o / "evaluation.json", report.model_dump_json(indent=2) + "\n")
        per = pl.DataFrame({"study_id": [int(p[0]) for p in pairs], "rouge_l": rl})
        if per_judge:
            jd = (
                pl.DataFrame(per_judge)
                .with_columns(pl.col("id").cast(pl.Int64).alias("study_id"))
                .drop("id")
            )
            per = per.join(jd, on="study_id", how="left")
        write_parquet(per.sort("study_id"), o / "per_study.parquet")
    return report


def report_table(rep: EvaluationReport):
    """A rich table of the headline numbers and per-lesion F1."""
    from rich.table import Table

    t = Table(
        title=f"evaluate: {rep.n_pairs} studies ({'+'.join(rep.reference_sections)}), labeler {rep.labeler}"
    )
    t.add_column("metric")
    t.add_column("value", justify="right")

    def f(v: float | None) -> str:
        return "—" if v is None else f"{v:.3f}"

    les = rep.lesion or {}
    t.add_row(
        "lesion macro P / R / F1",
        f"{f(les.get('macro_precision'))} / {f(les.get('macro_recall'))} / {f(les.get('macro_f1'))}",
    )
    t.add_row("lesion micro F1", f(les.get("micro_f1")))
    for s in les.get("lesions", []):
        if s.get("support"):
            t.add_row(f"  {s['lesion']} F1 (n={s['support']})", f(s.get("f1")))
    t.add_row("ROUGE-L", f(rep.rouge_l))
    t.add_row("METEOR", f(rep.meteor))
    if rep.judge is not None:
        for c in CRITERIA:
            t.add_row(f"judge {c}", f(getattr(rep.judge, c)))
        t.add_row("judge total (/20)", f(rep.judge.total))
    return t
