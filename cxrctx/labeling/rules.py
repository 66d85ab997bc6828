"""The rules labeler: a deterministic, NegEx-style reading of a report (no model).

`read_report(text)` reads every lesion mention with the shared lexicon (`cxrctx.vocab`:
mentions, negation / uncertainty scope, laterality) and folds them into one reading per
lesion:

- status: positive when any mention is affirmed *or hedged* (hedged mentions count as
  positive, as everywhere in cxrctx), negative when every mention is negated or the lesion
  is not mentioned. Borderline heart size follows `cxrctx.vocab.BORDERLINE_RULE`.
- location: the sides of the positive mentions (left + right → bilateral); "not mentioned"
  when no side is named (and always for cardiomegaly).
- evidence: the sentences of the deciding mentions, as character offsets into the text.
- clarity: *ambiguous* with reasons when a hedge decided it ("hedged"), a borderline
  phrase ("borderline"), a positive and a negated mention of the same lesion on the same
  side ("conflicting_mentions"), a list or comma the scope rules cannot settle
  ("scope_unsettled"), or sides that differ between sentences ("sides_differ"); else clear.

`label_documents_rules` labels a frame (id, text) into the label-lesions tables;
`write_rules` streams a whole input into the stage's sinks slice by slice. The stage
(`cxrctx.labeling.stage.label_lesions`, labeler "rules") adds input reading, sharding and
the output folder (same layout and manifest as the model labelers, backend "rules", model
null, prompt sha = lexicon sha).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import lru_cache
from typing import Any, cast

import polars as pl
import pyarrow as pa

from cxrctx.errors import CxrctxError
from cxrctx.labeling.models import Evidence, LesionReading, RulesReading
from cxrctx.labeling.prompt import schema_sha256
from cxrctx.labeling.tables import (
    DOC_SCHEMA,
    DUPLICATE_ID,
    EMPTY,
    FAIL_SCHEMA,
    LABEL_FRAME_SCHEMA,
    LabelResult,
    document_row,
)
from cxrctx.llm.sink import Sink
from cxrctx.models import Location
from cxrctx.vocab import LESIONS, MentionReading, lexicon, read_mentions

__all__ = [
    "label_documents_rules",
    "read_report",
    "reading_rows",
    "rules_labels",
    "write_rules",
]

NOT_MENTIONED = "not mentioned: the lexicon finds no expression of this lesion"
PROGRESS_EVERY = 1000
RULES_CHUNK = 20_000


# ---------------------------------------------------------------------------- reading


def read_report(text: str) -> RulesReading:
    """The rule reading of one report text (offsets index `text` as given)."""
    lex = lexicon()
    by_lesion: dict[str, list[MentionReading]] = {}
    for r in read_mentions(text):
        by_lesion.setdefault(r.lesion, []).append(r)
    lesions = [
        _fold(lesion, by_lesion[lesion], text) if lesion in by_lesion else _not_mentioned(lesion)
        for lesion in LESIONS
    ]
    return RulesReading.model_construct(
        lexicon_version=lex.version, lexicon_sha256=lex.sha256, lesions=lesions
    )


@lru_cache(maxsize=len(LESIONS))
def _not_mentioned(lesion: str) -> LesionReading:
    """The (shared, frozen) reading of a lesion the report does not mention."""
    return LesionReading.model_construct(
        lesion=lesion, status="negative", location="not mentioned", mentioned=False,
        clarity="clear", reasons=[], cues=[], evidence=[], rationale=NOT_MENTIONED,
    )  # fmt: skip


def _fold(lesion: str, mrs: list[MentionReading], text: str) -> LesionReading:
    """One lesion's reading from its mentions (see the module docstring for the rules)."""
    pos = [r for r in mrs if r.status != "negated"]
    neg = [r for r in mrs if r.status == "negated"]
    deciding = pos or neg
    best = [r for r in deciding if not r.reasons]
    reasons = set() if best else {x for r in deciding for x in r.reasons}
    location = "not mentioned"
    if pos:
        affirmed = [r for r in pos if r.status == "affirmed"]
        if affirmed and not best:
            reasons.discard("hedged")
        sides = {r.side for r in pos if r.side}
        location = _combine(sides) or "not mentioned"
        if len(sides) > 1 and len({r.sentence for r in pos if r.side}) > 1:
            reasons.add("sides_differ")
        if any(r.side is None or r.side in sides or location == "bilateral" for r in neg):
            reasons.add("conflicting_mentions")
    cues = sorted({r.cue for r in deciding if r.cue})
    spans = sorted({r.sentence for r in deciding})
    evidence = [Evidence.model_construct(start=a, end=b, text=text[a:b]) for a, b in spans]
    return LesionReading.model_construct(
        lesion=lesion, status="positive" if pos else "negative",
        location=cast(Location, location), mentioned=True, clarity="ambiguous" if reasons else "clear", reasons=sorted(reasons),
        cues=cues, evidence=evidence, rationale=_rationale(pos, neg, sorted(reasons)),
    )  # fmt: skip


def _combine(sides: set[str]) -> str | None:
    if "bilateral" in sides or {"left", "right"} <= sides:
        return "bilateral"
    return next(iter(sides), None)


def _rationale(pos: list[MentionReading], neg: list[MentionReading], reasons: list[str]) -> str:
    if pos:
        how = "hedged" if all(r.status == "hedged" for r in pos) else "affirmed"
        cues = sorted({r.cue for r in pos if r.cue and (how == "hedged" or r.status == how)})
    else:
        how, cues = "negated", sorted({r.cue for r in neg if r.cue})
        if not cues:
            how = "borderline heart size read as within normal"
    out = f"rules: {how}" + (f" ({', '.join(repr(c) for c in cues)})" if cues else "")
    return out + (f"; ambiguous: {', '.join(reasons)}" if reasons else "")


# ---------------------------------------------------------------------------- rows


def reading_rows(
    doc_id: str, reading: RulesReading, text_sha256: str, provenance: dict[str, Any]
) -> list[dict[str, Any]]:
    """The 14 label rows (LABEL_FRAME_SCHEMA dicts) of one rule reading.

    A hybrid labeler replaces the rows of `reading.ambiguous()` lesions with the model's
    answers (source "llm") and keeps the rest.
    """
    return [
        {
            "id": doc_id,
            "lesion": r.lesion,
            "status": r.status,
            "location": r.location,
            "rationale": r.rationale,
            "source": "rules" if r.mentioned else "not_mentioned",
            "llm_called": False,
            "text_sha256": text_sha256,
            **provenance,
            "evidence": [{"start": e.start, "end": e.end, "text": e.text} for e in r.evidence],
            "clarity": r.clarity,
        }
        for r in reading.lesions
    ]


def rules_provenance() -> dict[str, Any]:
    """Provenance columns of rule-decided rows: backend rules, no model, lexicon sha."""
    return {
        "backend": "rules",
        "model": None,
        "prompt_sha256": lexicon().sha256,
        "schema_sha256": schema_sha256(),
        "sampling": "{}",
    }


def label_documents_rules(
    docs: pl.DataFrame,
    *,
    progress: Callable[[int, int, int], None] | None = None,
    seen_ids: set[str] | None = None,
    seen_texts: set[str] | None = None,
) -> LabelResult:
    """Label every document of `docs` (columns id, text) with the rules; a LabelResult with
    the same tables as `label_documents` (14 label rows per non-empty document).

    `seen_ids` / `seen_texts` carry the ids and text hashes of earlier slices of one run
    (repeated ids across slices are failures; unique texts are counted once)."""
    if "id" not in docs.columns or "text" not in docs.columns:
        raise CxrctxError(f"documents need columns id and text (got {', '.join(docs.columns)})")
    prov = rules_provenance()
    ids = docs["id"].cast(pl.String).to_list()
    texts = docs["text"].cast(pl.String).to_list()
    keys = ("documents", "labeled", "empty", "duplicate_id", "failed", "llm_called", "no_candidate",
            "cached", "unique_texts", "engine_requests", "rules", "not_mentioned", "ambiguous")  # fmt: skip
    counts = dict.fromkeys(keys, 0)
    counts["documents"] = len(ids)
    cols: dict[str, list[Any]] = {c: [] for c in _VARYING}
    doc_rows: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    seen: set[str] = set() if seen_ids is None else seen_ids
    memo: dict[str, tuple[list[tuple], list[str], int]] = {}
    total = len(ids)
    for i, (doc_id, raw) in enumerate(zip(ids, texts, strict=True)):
        if progress and i % PROGRESS_EVERY == 0:
            progress(i, total, 0)
        if doc_id is None or doc_id in seen:
            counts["duplicate_id"] += 1
            failures.append({"id": doc_id or "", "reason": DUPLICATE_ID, "raw_text": None, "attempts": 0,
                             "transient": False})  # fmt: skip
            continue
        seen.add(doc_id)
        text = (raw or "").strip()
        if not text:
            counts["empty"] += 1
            failures.append({"id": doc_id, "reason": EMPTY, "raw_text": None, "attempts": 0,
                             "transient": False})  # fmt: skip
            doc_rows.append(document_row(doc_id, "", "empty", []))
            continue
        sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if sha not in memo:
            memo[sha] = _columns_of(read_report(text))
        rows, cands, n_amb = memo[sha]
        cols["id"].extend([doc_id] * len(LESIONS))
        cols["text_sha256"].extend([sha] * len(LESIONS))
        for row in rows:
            for c, v in zip(_PER_LESION, row, strict=True):
                cols[c].append(v)
        counts["labeled"] += 1
        counts["no_candidate"] += int(not cands)
        counts["rules"] += len(cands)
        counts["not_mentioned"] += len(LESIONS) - len(cands)
        counts["ambiguous"] += n_amb
        doc_rows.append(document_row(doc_id, sha, "labeled", cands))
    counts["unique_texts"] = len(memo)
    if seen_texts is not None:
        seen_texts.update(memo)
    if progress:
        progress(total, total, 0)
    return LabelResult(
        counts,
        prov,
        labels=_label_frame(cols, prov),
        documents=pl.DataFrame(doc_rows, schema=cast(Any, DOC_SCHEMA)),
        failures=pl.DataFrame(failures, schema=FAIL_SCHEMA),
    )


_PER_LESION = ("lesion", "status", "location", "rationale", "source", "evidence", "clarity")
_VARYING = ("id", "text_sha256", *_PER_LESION)


def _columns_of(reading: RulesReading) -> tuple[list[tuple], list[str], int]:
    """Per-lesion column values of one reading (memoized per unique text), its mentioned
    lesions and its number of ambiguous lesions."""
    rows = [
        (
            r.lesion,
            r.status,
            r.location,
            r.rationale,
            "rules" if r.mentioned else "not_mentioned",
            [{"start": e.start, "end": e.end, "text": e.text} for e in r.evidence],
            r.clarity,
        )
        for r in reading.lesions
    ]
    cands = [r.lesion for r in reading.lesions if r.mentioned]
    return rows, cands, sum(r.clarity == "ambiguous" for r in reading.lesions)


def _label_frame(cols: dict[str, list[Any]], prov: dict[str, Any]) -> pl.DataFrame:
    """The labels table in LABEL_FRAME_SCHEMA column order (constants added as literals).

    Built through Arrow: converting the nested evidence lists is ~20x faster there.
    """
    ev = pa.list_(pa.struct([("start", pa.int64()), ("end", pa.int64()), ("text", pa.string())]))
    table = pa.table(
        {c: pa.array(cols[c], type=ev if c == "evidence" else pa.string()) for c in _VARYING}
    )
    df = pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    const = {"llm_called": False, **prov}
    df = df.with_columns(pl.lit(v, dtype=LABEL_FRAME_SCHEMA[k]).alias(k) for k, v in const.items())
    return df.select(list(LABEL_FRAME_SCHEMA)).cast(pl.Schema(LABEL_FRAME_SCHEMA))


def rules_labels(docs: pl.DataFrame) -> pl.DataFrame:
    """id, lesion, status, location of every document (drop-in for simple keyword labelers)."""
    res = label_documents_rules(docs)
    return res.labels.select("id", "lesion", "status", "location")


# ---------------------------------------------------------------------------- streaming


def write_rules(
    docs: pl.DataFrame,
    sinks: dict[str, Sink],
    progress: Callable[[int, int, int], None] | None = None,
    phase: Callable[[str], None] | None = None,
) -> LabelResult:
    """Label `docs` slice by slice into the stage's `sinks` (memory stays flat); the
    result holds the counts (tables are in the sinks). `phase` hears "writing shards"
    while a slice's rows are written (seconds at full scale) and "labeling" after."""
    counts: dict[str, int] = {}
    ids: set[str] = set()
    shas: set[str] = set()
    for start in range(0, docs.height, RULES_CHUNK):
        step = (lambda i, n, f, s=start: progress(s + i, docs.height, f)) if progress else None
        part = label_documents_rules(
            docs.slice(start, RULES_CHUNK), progress=step, seen_ids=ids, seen_texts=shas
        )
        if phase:
            phase("writing shards")
        for name, sink in sinks.items():
            sink.add(part.table(name).to_dicts())
        if phase:
            phase("labeling")
        for k, v in part.counts.items():
            counts[k] = counts.get(k, 0) + v
    counts["unique_texts"] = len(shas)
    return LabelResult(counts, rules_provenance())
