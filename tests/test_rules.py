"""The rules labeler: per-lesion reading, clarity reasons, label tables, the output folder.

Reports are hand-written for the rule each test checks (never synthetic-generator text).
"""

from __future__ import annotations

import hashlib
import json

import polars as pl
import pytest

from cxrctx.errors import CxrctxError
from cxrctx.io import read_shards
from cxrctx.labeling import LABEL_FRAME_SCHEMA, label_lesions, load_labels
from cxrctx.labeling.models import LabelRow, RulesReading
from cxrctx.labeling.rules import (
    label_documents_rules,
    read_report,
    reading_rows,
    rules_labels,
    rules_provenance,
)
from cxrctx.resources import read_bytes
from cxrctx.vocab import LESIONS

REPORT = (
    "FINDINGS: Mild cardiomegaly. Possible small left pleural effusion. No pneumothorax.\n\n"
    "IMPRESSION: Right lower lobe and left lower lobe atelectasis."
)


def test_read_report_statuses_locations_and_evidence():
    r = read_report(REPORT)
    assert isinstance(r, RulesReading) and [x.lesion for x in r.lesions] == list(LESIONS)
    card, eff, ptx, atel = (
        r.get(n) for n in ("cardiomegaly", "pleural effusion", "pneumothorax", "atelectasis")
    )
    assert (card.status, card.location, card.clarity) == ("positive", "not mentioned", "clear")
    assert (eff.status, eff.location, eff.clarity, eff.reasons) == (
        "positive",
        "left",
        "ambiguous",
        ["hedged"],
    )
    assert eff.cues == ["possible"] and "hedged" in eff.rationale
    assert (ptx.status, ptx.location, ptx.cues) == ("negative", "not mentioned", ["no"])
    assert (atel.status, atel.location) == ("positive", "bilateral")
    for x in (card, eff, ptx, atel):
        assert x.mentioned and x.evidence
        for e in x.evidence:
            assert REPORT[e.start : e.end] == e.text
    assert eff.evidence[0].text == "Possible small left pleural effusion."
    mass = r.get("mass")
    assert (mass.status, mass.mentioned, mass.clarity, mass.evidence) == (
        "negative",
        False,
        "clear",
        [],
    )
    assert r.ambiguous() == ["pleural effusion"]


def test_clarity_reasons():
    def reasons(text: str, lesion: str) -> tuple[str, str, list[str]]:
        x = read_report(text).get(lesion)
        return x.status, x.location, x.reasons

    # a positive and a negated mention of the same lesion and side
    assert reasons("Small effusion. No pleural effusion.", "pleural effusion") == (
        "positive",
        "not mentioned",
        ["conflicting_mentions"],
    )
    # a negation on the other side is not a conflict
    assert reasons("Small right effusion. No left effusion.", "pleural effusion") == (
        "positive",
        "right",
        [],
    )
    # sides that differ between sentences
    assert reasons("Left effusion. Right effusion.", "pleural effusion") == (
        "positive",
        "bilateral",
        ["sides_differ"],
    )
    assert reasons("Right and left effusions.", "pleural effusion") == ("positive", "bilateral", [])
    assert reasons("No pneumothorax, mild cardiomegaly.", "cardiomegaly") == (
        "positive",
        "not mentioned",
        ["scope_unsettled"],
    )
    assert reasons("Heart size at the upper limits of normal.", "cardiomegaly") == (
        "negative",
        "not mentioned",
        ["borderline"],
    )
    # an affirmed mention settles a lesion a hedge alone would leave ambiguous
    assert reasons("Possible atelectasis. Left basilar atelectasis.", "atelectasis") == (
        "positive",
        "left",
        [],
    )


def test_reading_rows_for_a_hybrid_labeler():
    rows = reading_rows("s1", read_report(REPORT), "abc", rules_provenance())
    assert len(rows) == 14 and set(rows[0]) == set(LABEL_FRAME_SCHEMA)
    by = {r["lesion"]: r for r in rows}
    assert by["cardiomegaly"]["source"] == "rules" and by["mass"]["source"] == "not_mentioned"
    assert by["pleural effusion"]["clarity"] == "ambiguous" and by["mass"]["model"] is None
    assert by["pleural effusion"]["text_sha256"] == "abc" and by["mass"]["evidence"] == []
    for r in rows:
        LabelRow.model_validate(r)  # the published label contract


def test_label_documents_rules_tables_and_counts():
    docs = pl.DataFrame(
        {
            "id": ["a", "b", "c", "a", "d"],
            "text": [REPORT, "  The lungs are clear.  ", "", "dup", "  " + REPORT + "\n"],
        }
    )
    res = label_documents_rules(docs)
    c = res.counts
    assert (c["documents"], c["labeled"], c["empty"], c["duplicate_id"], c["failed"]) == (
        5,
        3,
        1,
        1,
        0,
    )
    assert c["no_candidate"] == 1 and c["unique_texts"] == 2  # a and d share the stripped text
    assert c["rules"] == 2 * 4 and c["not_mentioned"] == 14 * 3 - 8 and c["ambiguous"] == 2
    assert res.labels.height == 14 * 3 and dict(res.labels.schema) == LABEL_FRAME_SCHEMA
    assert (
        set(res.labels["backend"]) == {"rules"}
        and res.labels["model"].null_count() == res.labels.height
    )
    assert not res.labels["llm_called"].any()
    sha = hashlib.sha256(REPORT.encode()).hexdigest()
    d = res.labels.filter(pl.col("id") == "d")
    assert set(d["text_sha256"]) == {sha}
    ev = d.filter(pl.col("lesion") == "pneumothorax")["evidence"].to_list()[0]
    assert (
        REPORT[ev[0]["start"] : ev[0]["end"]] == "No pneumothorax."
    )  # offsets into the stripped text
    assert sorted(res.failures["reason"].to_list()) == [
        "duplicate id (first occurrence kept)",
        "empty text",
    ]
    assert res.documents.filter(pl.col("id") == "a")["candidates"].to_list()[0] == [
        "cardiomegaly", "pleural effusion", "pneumothorax", "atelectasis",
    ]  # fmt: skip
    with pytest.raises(CxrctxError, match="columns id and text"):
        label_documents_rules(pl.DataFrame({"x": [1]}))


def test_rules_labels_drop_in():
    df = rules_labels(pl.DataFrame({"id": ["1"], "text": ["Left effusion. No edema."]}))
    assert df.columns == ["id", "lesion", "status", "location"] and df.height == 14
    pos = df.filter(pl.col("status") == "positive").rows()
    assert pos == [("1", "pleural effusion", "positive", "left")]


def test_rules_labeler_writes_the_label_lesions_layout(tmp_path):
    src = tmp_path / "docs.csv"
    pl.DataFrame(
        {"sid": ["1", "2", "3"], "report": [REPORT, "No edema.", "Left apical mass."]}
    ).write_csv(src)
    out = tmp_path / "out"
    run = label_lesions(src, out, labeler="rules", id_column="sid", text_column="report")
    m = json.loads((out / "manifest.json").read_text())
    lex_sha = hashlib.sha256(read_bytes("prompts", "label_lesions", "lexicon_v1.json")).hexdigest()
    assert m["stage"] == "label-lesions" and m["config"]["backend"] == "rules"
    assert m["config"]["model"] is None and m["config"]["prompt_sha256"] == lex_sha
    assert m["config"]["lexicon_sha256"] == lex_sha and m["counts"]["labeled"] == 3
    labels = read_shards(out / "labels")
    assert labels.height == 42 and set(labels["prompt_sha256"]) == {lex_sha}
    assert read_shards(out / "documents").height == 3 and read_shards(out / "failures").height == 0
    first = {p.name: p.read_bytes() for p in (out / "labels").iterdir()}
    label_lesions(src, out, labeler="rules", id_column="sid", text_column="report")  # same input, same bytes
    assert {p.name: p.read_bytes() for p in (out / "labels").iterdir()} == first
    assert run.result is not None and run.result.counts["ambiguous"] == 1
    mass = load_labels(out).filter((pl.col("id") == "3") & (pl.col("lesion") == "mass"))
    assert mass.select("status", "location").row(0) == ("positive", "left")


def test_rules_labeler_shard_limit_dry_run_and_errors(tmp_path):
    src = tmp_path / "docs.jsonl"
    pl.DataFrame({"id": [str(i) for i in range(6)], "text": ["Left effusion."] * 6}).write_ndjson(
        src
    )
    run = label_lesions(src, tmp_path / "o", labeler="rules", shard="1/2", limit=4)
    assert run.result is not None and run.result.documents["id"].to_list() == ["2", "3"]
    assert (tmp_path / "o" / "manifest-shard-00001-of-00002.json").exists()
    dry = label_lesions(src, tmp_path / "dry", labeler="rules", dry_run=True)
    assert dry.dry_run is not None and dry.dry_run["documents"] == 6
    assert dry.dry_run["reading"]["lesions"][2]["status"] == "positive"
    assert not (tmp_path / "dry").exists()
    with pytest.raises(CxrctxError, match="unknown section"):
        label_lesions(src, tmp_path / "x", labeler="rules", sections=["nonsense"])
    with pytest.raises(CxrctxError, match="not found"):
        label_lesions(tmp_path / "missing.csv", tmp_path / "x", labeler="rules")


def test_cli_rules_backend_is_the_default_without_a_model(tmp_path):
    from typer.testing import CliRunner

    from cxrctx.cli import app

    src = tmp_path / "docs.csv"
    pl.DataFrame({"sid": ["1", "2"], "report": [REPORT, "No edema."]}).write_csv(src)
    runner = CliRunner()
    base = ["label-lesions", str(src), "--id-column", "sid", "--text-column", "report"]
    for out, extra in ((tmp_path / "a", []), (tmp_path / "b", ["--backend", "rules"])):
        r = runner.invoke(app, [*base, "--out", str(out), *extra])
        assert r.exit_code == 0, r.output
        m = json.loads((out / "manifest.json").read_text())
        assert m["config"]["backend"] == "rules" and m["counts"]["labeled"] == 2
        assert "(rules)" in r.output and "ambiguous" in r.output
    labels = read_shards(tmp_path / "a" / "labels")
    assert dict(labels.schema) == LABEL_FRAME_SCHEMA and labels.height == 28
    r = runner.invoke(
        app, [*base, "--out", str(tmp_path / "c"), "--backend", "rules", "--model", "m"]
    )
    assert r.exit_code == 2 and "takes no --model" in r.output
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "d"), "--dry-run"])
    assert r.exit_code == 0 and '"lexicon_sha256"' in r.output and not (tmp_path / "d").exists()
