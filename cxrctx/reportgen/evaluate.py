"""`evaluate`: generated reports vs reference reports (CLALA-Net paper, "Evaluation strategy").

- Lesion P/R/F1 (the paper's lesion evaluation): both texts are labeled with the lesion
  labeler (`cxrctx.labeling.label_documents` through an LLM backend) — or the reference
  side comes from an existing label directory (e.g. label-lesions output, or a synthetic
  root's `truth/`). Without any backend the deterministic *rules* labeler (cxrctx.labeling.rules) stands in; the
  output says so, because it is not the paper's method. Scores come from
  `cxrctx.labeling.evaluate_labels` (positive class, per lesion, micro and macro).
- Classifier ROC-AUC of the generated rows' lesion probabilities against the same
  reference labels (scikit-learn), so one evaluation shows what the classifier saw and
  what the reports say.
- ROUGE-L, METEOR and the temporal-hallucination rate: see `cxrctx.reportgen.metrics`.
- GREEN and F1-RadGraph need their own models and are not computed (said in `notes`).
- LLM consistency judge: four criteria scored 1–5 (`prompts/consistency_judge/`); the
  report gives each criterion's mean and the total (sum of the four means, out of 20, as
  in the paper's Table 2).

An empty generated report is a counted failure (`n_empty_generated`): it asserts no
lesion (all 14 negative, no labeler call), scores ROUGE-L 0 and is never sent to the
judge, which would otherwise grade an empty text mid-scale. The reference text is the
record's findings and impression (configurable); which sections were used is part of the
output.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from cxrctx.errors import CxrctxError
from cxrctx.io import (
    Stage,
    atomic_write_text,
    config_hash,
    file_entry,
    open_stage,
    stage_inputs,
    write_parquet,
    write_stage_manifest,
)
from cxrctx.labeling import (
    evaluate_labels,
    keyword_labels,
    label_documents,
    label_documents_rules,
    load_labels,
)
from cxrctx.output_policy import prepare_output
from cxrctx.progress import as_callback, progress_arg
from cxrctx.reportgen.metrics import (
    TemporalHallucination,
    classifier_auc,
    meteor_scores,
    rouge_l_scores,
    temporal_hallucination,
)
from cxrctx.reportgen.tasks import CRITERIA, judge_reports
from cxrctx.vocab import LESIONS

if TYPE_CHECKING:
    from cxrctx.llm.base import Engine, Sampling

log = logging.getLogger(__name__)

#: The stage name written into the manifest and the output-folder marker.
STAGE = "evaluate"

REFERENCE_SECTIONS = ("findings", "impression")


class JudgeScores(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(description="Studies judged successfully")
    failures: int = Field(description="Studies whose judge answer was unusable")
    empty: int = Field(
        0, description="Empty generated reports: never sent to the judge, not in n (a failure)"
    )
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
    n_empty_generated: int = Field(
        description="Pairs whose generated report is empty (a failure: all-negative, ROUGE-L 0, not judged)"
    )
    reference_sections: list[str]
    labeler: str = Field(
        description="'llm:<backend>/<model>' or 'rules' (not the paper's LLM labeler)"
    )
    reference_labels: str = Field(
        description="Label directory used for the reference side, or the labeler"
    )
    lesion: dict[str, Any] | None = Field(
        description="cxrctx.labeling EvalReport: per-lesion and averaged P/R/F1"
    )
    classifier_auc: dict[str, Any] | None = Field(
        description="ROC-AUC of the generated rows' lesion_probs against the reference labels (n, per_lesion, macro); null without lesion_probs"
    )
    rouge_l: float | None = Field(
        description="Mean ROUGE-L F1 over pairs (rouge-score rougeL, no stemming)"
    )
    meteor: float | None
    temporal_hallucination: TemporalHallucination | None = Field(
        description="Comparison language in generated reports of studies without a prior study; null when the records lack n_prior_studies"
    )
    judge: JudgeScores | None
    notes: list[str]


# ----------------------------------------------------------------------------- judge


def run_judge(
    engine: Engine,
    pairs: list[tuple[str, str, str]],
    sampling: Sampling | None = None,
    cache_dir: str | os.PathLike | None = None,
    executor: Any = None,
) -> tuple[JudgeScores, list[dict]]:
    """The consistency judge (a task on the shared LLM layer) over (key, generated, reference)."""
    per, failed, prompt_sha = judge_reports(
        engine, pairs, sampling=sampling, cache_dir=cache_dir, executor=executor
    )
    for key, reason in failed:
        log.debug("judge failed for %s: %s", key, reason)
    means = {c: (sum(p[c] for p in per) / len(per) if per else None) for c in CRITERIA}
    total = sum(v for v in means.values() if v is not None) if per else None
    return (
        JudgeScores(
            n=len(per),
            failures=len(failed),
            backend=str(getattr(engine, "backend", "?")),
            model=str(getattr(engine, "model", "?")),
            prompt_sha256=prompt_sha,
            total=total,
            mean=total / 4 if total is not None else None,
            empty=0,
            clinical_accuracy=means["clinical_accuracy"],
            findings_completeness=means["findings_completeness"],
            linguistic_quality=means["linguistic_quality"],
            report_structure=means["report_structure"],
        ),
        per,
    )


# ----------------------------------------------------------------------------- inputs


def _read_generated(st: Stage) -> pl.DataFrame:
    """The generated reports of a checked `generate` output."""
    df = st.read()
    if not {"study_id", "report"} <= set(df.columns):
        raise CxrctxError(f"{st.dir}: generated shards lack study_id/report columns")
    return df


def _read_reference(st: Stage, sections: list[str]) -> pl.DataFrame:
    """study_id, reference text (the sections joined) and n_prior_studies when recorded."""
    df = st.read()
    p = st.dir
    bad = [s for s in sections if s not in df.columns]
    if bad:
        raise CxrctxError(f"{p}: records lack section column(s) {bad}")
    text = pl.concat_str(
        [pl.col(s).fill_null("") for s in sections], separator=" "
    ).str.strip_chars()
    prior = ["n_prior_studies"] if "n_prior_studies" in df.columns else []
    return df.select("study_id", text.alias("reference"), *prior)


Pair = tuple[str, str, str]  # (study_id, generated report, reference text)


def _pair(
    gen: pl.DataFrame, ref: pl.DataFrame, reference: str | os.PathLike, sections: tuple[str, ...]
) -> tuple[pl.DataFrame, list[Pair], list[str]]:
    """Generated rows joined with their records; the scorable pairs; notes on what is not."""
    joined = gen.select("study_id", "report").join(ref, on="study_id", how="left")
    have = joined.filter(pl.col("reference").is_not_null() & (pl.col("reference") != ""))
    notes: list[str] = ["GREEN and F1-RadGraph are not computed (they need their own models)."]
    missing = joined.height - have.height
    if missing:
        notes.append(
            f"{missing} generated report(s) have no reference {'+'.join(sections)} text and are not scored."
        )
    if have.height == 0:
        raise CxrctxError(
            f"{reference}: none of the {gen.height} generated studies has a reference text"
        )
    pairs = [
        (str(s), g or "", r)
        for s, g, r in have.select("study_id", "report", "reference").iter_rows()
    ]
    empty = sum(1 for _, g, _ in pairs if not g.strip())
    if empty:
        notes.append(
            f"{empty} generated report(s) are empty: counted as failures (all lesions negative, "
            "ROUGE-L 0, not sent to the judge)."
        )
    return joined, pairs, notes


# ----------------------------------------------------------------------------- lesion labels


def _engine_name(engine: Engine) -> str:
    return f"llm:{getattr(engine, 'backend', '?')}/{getattr(engine, 'model', '?')}"


def _docs(pairs: list[Pair], side: int) -> pl.DataFrame:
    return pl.DataFrame({"id": [p[0] for p in pairs], "text": [p[side] for p in pairs]})


def _label_generated(
    pairs: list[Pair], engine: Engine | None, cache_dir: Any, notes: list[str], executor: Any = None
) -> tuple[pl.DataFrame, str]:
    """Labels of the generated side and the labeler's name; an empty report is all-negative."""
    docs = _docs(pairs, 1)
    if engine is None:
        notes.append(
            "lesion labels come from the deterministic rules labeler (no LLM backend given); not the paper's LLM labeler."
        )
        return _rules_labels(docs), "rules"
    nonempty = docs.filter(pl.col("text").str.strip_chars() != "")
    pred = keyword_labels(docs.filter(pl.col("text").str.strip_chars() == ""))
    if nonempty.height:
        res = label_documents(nonempty, engine, cache_dir=cache_dir, executor=executor)
        pred = pl.concat([res.labels.select(pred.columns), pred])
        if res.failures.height:
            notes.append(
                f"labeler failed on {res.failures.height} generated report(s); they are not scored"
            )
    return pred, _engine_name(engine)


def _label_reference(
    pairs: list[Pair],
    reference_labels: str | os.PathLike | None,
    engine: Engine | None,
    cache_dir: Any,
    executor: Any = None,
) -> tuple[pl.DataFrame, str]:
    """Labels of the reference side: a label directory, the LLM labeler or the rules."""
    docs = _docs(pairs, 2)
    if reference_labels is not None:
        ids = docs["id"].to_list()
        gold = load_labels(reference_labels).filter(pl.col("id").is_in(ids))
        if gold.height == 0:
            raise CxrctxError(
                f"{reference_labels}: the reference labels cover none of the {len(ids)} evaluated studies"
            )
        return gold, str(reference_labels)
    if engine is not None:
        res = label_documents(docs, engine, cache_dir=cache_dir, executor=executor)
        return res.labels, _engine_name(engine)
    return _rules_labels(docs), "rules"


def _rules_labels(docs: pl.DataFrame) -> pl.DataFrame:
    """The rules labeler's 14 rows per report (id, lesion, status, location); an empty
    report mentions nothing, so all 14 are negative."""
    blank = pl.col("text").str.strip_chars() == ""
    cols = ["id", "lesion", "status", "location"]
    said = docs.filter(~blank)
    parts = [keyword_labels(docs.filter(blank)).select(cols)]
    if said.height:
        parts.insert(0, label_documents_rules(said).labels.select(cols))
    return pl.concat(parts)


def _lesion_scores(pred: pl.DataFrame, gold: pl.DataFrame, gold_kind: str) -> dict[str, Any]:
    cols = ["id", "lesion", "status"] + (
        ["location"] if "location" in pred.columns and "location" in gold.columns else []
    )
    rep = evaluate_labels(
        pred.select(cols), gold.select(cols), lesions=list(LESIONS), gold_kind=gold_kind
    )
    return rep.model_dump(mode="json")


def _classifier_auc(gen: pl.DataFrame, pairs: list[Pair], gold: pl.DataFrame) -> dict | None:
    if "lesion_probs" not in gen.columns:
        return None
    ids = [p[0] for p in pairs]
    probs = gen.select(pl.col("study_id").cast(pl.String).alias("id"), "lesion_probs").filter(
        pl.col("id").is_in(ids)
    )
    return classifier_auc(probs, gold)


# ----------------------------------------------------------------------------- judge + temporal


def _judge(
    engine: Engine,
    pairs: list[Pair],
    notes: list[str],
    cache_dir: str | os.PathLike | None,
    executor: Any = None,
) -> tuple[JudgeScores, list[dict]]:
    """The consistency judge on the non-empty reports; empty ones are counted, not judged."""
    nonempty = [p for p in pairs if p[1].strip()]
    judge, per = run_judge(engine, nonempty, cache_dir=cache_dir, executor=executor)
    judge = judge.model_copy(update={"empty": len(pairs) - len(nonempty)})
    if judge.failures:
        notes.append(f"the judge's answer was unusable for {judge.failures} stud(ies)")
    return judge, per


def _temporal(joined: pl.DataFrame, notes: list[str]) -> TemporalHallucination | None:
    """Comparison language in generated reports whose record has no prior study."""
    if "n_prior_studies" not in joined.columns:
        notes.append("the records lack n_prior_studies: no temporal-hallucination rate.")
        return None
    rows = joined.filter(pl.col("n_prior_studies").is_not_null())
    return temporal_hallucination(
        [g or "" for g in rows["report"].to_list()],
        rows["reference"].to_list(),
        rows["n_prior_studies"].to_list(),
    )


# ----------------------------------------------------------------------------- main


@progress_arg("evaluate")
def evaluate(
    generated: str | os.PathLike,
    *,
    reference: str | os.PathLike,
    reference_labels: str | os.PathLike | None = None,
    labeler_engine: Engine | None = None,
    judge_engine: Engine | None = None,
    sections: tuple[str, ...] = REFERENCE_SECTIONS,
    out: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: Callable[[str], None] | bool | None = None,
    executor: Any = None,
) -> EvaluationReport:
    """Score generated reports against reference records; writes OUT/evaluation.json (+ per-study table).

    Both inputs are checked against their manifests first. With `out`, the folder follows the
    shared output policy (another run's folder is refused unless `overwrite`) and gets a
    manifest listing the inputs' checksums, like every stage.

    `progress(phase)` is called as each phase starts: "text", "labels", "judge".
    """
    progress = as_callback(progress)
    sections = tuple(sections)
    for s in sections:
        if s not in REFERENCE_SECTIONS:
            raise CxrctxError(f"reference section must be findings or impression (got {s!r})")
    step = progress or (lambda _phase: None)
    gen_st, ref_st = open_stage(generated, "generate"), open_stage(reference, "build-priors")
    options = {
        "sections": list(sections),
        "reference_labels": str(reference_labels) if reference_labels else None,
        "labeler": _engine_name(labeler_engine) if labeler_engine is not None else "rules",
        "judge": _engine_name(judge_engine) if judge_engine is not None else None,
        "inputs": [f.sha256 for f in stage_inputs(gen_st) + stage_inputs(ref_st)],
    }
    if out is not None:  # the shared output policy, before any work
        prepare_output(out, stage=STAGE, config_hash=config_hash(options), overwrite=overwrite)
    gen = _read_generated(gen_st)
    joined, pairs, notes = _pair(gen, _read_reference(ref_st, list(sections)), reference, sections)
    step("text")
    rl = rouge_l_scores([(g, r) for _, g, r in pairs])
    met, why = meteor_scores([(g, r) for _, g, r in pairs])
    notes += [why] if why else []
    temporal = _temporal(joined, notes)
    step("labels")
    pred, labeler = _label_generated(pairs, labeler_engine, cache_dir, notes, executor)
    gold, gold_src = _label_reference(pairs, reference_labels, labeler_engine, cache_dir, executor)
    judge: JudgeScores | None = None
    per_judge: list[dict] = []
    if judge_engine is not None:
        step("judge")
        judge, per_judge = _judge(judge_engine, pairs, notes, cache_dir, executor)
    report = EvaluationReport(
        n_generated=gen.height,
        n_pairs=len(pairs),
        n_missing_reference=joined.height - len(pairs),
        n_empty_generated=sum(1 for _, g, _ in pairs if not g.strip()),
        reference_sections=list(sections),
        labeler=labeler,
        reference_labels=gold_src,
        lesion=_lesion_scores(pred, gold, gold_src),
        classifier_auc=_classifier_auc(gen, pairs, gold),
        rouge_l=sum(rl) / len(rl),
        meteor=met,
        temporal_hallucination=temporal,
        judge=judge,
        notes=notes,
    )
    if out is not None:
        _write(Path(out), report, pairs, rl, per_judge, options, gen_st, ref_st)
    return report


def _write(
    out: Path,
    report: EvaluationReport,
    pairs: list[Pair],
    rl: list[float],
    per_judge: list[dict],
    options: dict[str, Any],
    gen_st: Stage,
    ref_st: Stage,
) -> None:
    """evaluation.json, per_study.parquet (study_id, rouge_l[, judge criteria]), manifest.json."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "evaluation.json", report.model_dump_json(indent=2) + "\n")
    per = pl.DataFrame(
        {"study_id": [int(p[0]) for p in pairs], "rouge_l": rl},
        schema={"study_id": pl.Int64, "rouge_l": pl.Float64},
    )
    if per_judge:
        jd = (
            pl.DataFrame(per_judge)
            .with_columns(pl.col("id").cast(pl.Int64).alias("study_id"))
            .drop("id")
        )
        per = per.join(jd, on="study_id", how="left")
    info = write_parquet(per.sort("study_id"), out / "per_study.parquet")
    write_stage_manifest(
        out,
        stage=STAGE,
        schema_version=1,
        config=options,
        inputs=stage_inputs(gen_st) + stage_inputs(ref_st),
        tables=[info.model_copy(update={"path": "per_study.parquet"})],
        files=[file_entry(out / "evaluation.json", out)],
        counts={"studies": len(pairs)},
    )
