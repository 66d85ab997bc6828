"""The hybrid labeler: rules first, a scripted model only for the ambiguous lesions."""

from __future__ import annotations

import json

import polars as pl
import pytest
from typer.testing import CliRunner

from cxrctx.cli import app
from cxrctx.io import read_shards
from cxrctx.labeling import Labeler, label_documents_hybrid, load_hybrid_prompt
from cxrctx.labeling.hybrid import HybridTask, short_schema
from cxrctx.llm.base import ChatRequest
from cxrctx.llm.fake import FakeEngine
from cxrctx.resources import read_bytes
from cxrctx.vocab import LESIONS
from tests._llm_helpers import good_answer, scripted, smollm_gguf

HEDGED = (
    "FINDINGS: No pneumothorax. Small left pleural effusion. Possible right lower lobe pneumonia."
)
TEXTS = {
    "a": HEDGED,
    "b": "FINDINGS: Heart is enlarged. No pleural effusion.",
    "c": "FINDINGS: Lungs are clear.",
    "d": "   ",
}
runner = CliRunner()


def _docs(texts: dict[str, str] = TEXTS) -> pl.DataFrame:
    return pl.DataFrame({"id": list(texts), "text": list(texts.values())})


class Recorder:
    """A scripted engine that keeps every request it was sent."""

    def __init__(self, *answers):
        self.engine = scripted(*answers)
        self.requests: list[ChatRequest] = []
        inner = self.engine.responder

        def responder(req: ChatRequest):
            self.requests.append(req)
            return inner(req)

        self.engine.responder = responder


def test_only_ambiguous_lesions_are_asked_from_their_evidence_sentences():
    rec = Recorder()
    res = label_documents_hybrid(_docs(), rec.engine)
    assert len(rec.requests) == 1  # only report "a" has an ambiguous lesion
    req = rec.requests[0]
    assert req.json_schema is not None and req.json_schema["required"] == ["pneumonia"]
    user = req.messages[-1]["content"]
    assert "- FINDINGS: Possible right lower lobe pneumonia." not in user  # sentence, not section
    assert "Possible right lower lobe pneumonia." in user and "RULE READING: positive" in user
    assert "location right" in user and "hedge" in user
    assert "pneumothorax" not in user and "effusion" not in user  # no other sentence of the report
    assert "reasoning" in req.messages[0]["content"]
    lab = res.labels
    a = {r["lesion"]: r for r in lab.filter(pl.col("id") == "a").iter_rows(named=True)}
    assert a["pneumonia"]["source"] == "llm" and a["pneumonia"]["llm_called"] is True
    assert (a["pneumonia"]["status"], a["pneumonia"]["location"]) == ("positive", "left")
    assert a["pneumonia"]["rationale"] == "says pneumonia"
    ev = a["pneumonia"]["evidence"]
    assert len(ev) == 1 and HEDGED[ev[0]["start"] : ev[0]["end"]] == ev[0]["text"]
    assert a["pleural effusion"]["source"] == "rules" and a["pleural effusion"]["model"] is None
    assert a["pneumothorax"]["source"] == "rules" and a["mass"]["source"] == "not_mentioned"
    assert a["pneumonia"]["model"] == "scripted" and a["pneumonia"]["backend"] == "fake"
    assert a["pneumonia"]["prompt_sha256"] == load_hybrid_prompt().sha256
    assert set(lab["source"]) == {"rules", "llm", "not_mentioned"}
    c = res.counts
    assert (c["documents"], c["labeled"], c["empty"], c["llm_called"]) == (4, 3, 1, 1)
    assert (c["rules"], c["llm"], c["not_mentioned"]) == (4, 1, 14 * 3 - 5)
    assert c["llm_changed"] == 1 and c["ambiguous"] == 1 and c["engine_requests"] == 1
    assert lab.height == 14 * 3 and res.failures["reason"].to_list() == ["empty text"]


def test_failed_answer_is_a_failure_row_not_the_rule_reading():
    res = label_documents_hybrid(_docs(), scripted("not json", "still not json"))
    c = res.counts
    assert (c["failed"], c["llm_failed_lesions"], c["labeled"]) == (1, 1, 2)
    assert "a" not in res.labels["id"].to_list()  # no silent rule fallback for report a
    fail = res.failures.filter(pl.col("id") == "a").row(0, named=True)
    assert fail["attempts"] == 2 and "invalid JSON" in fail["reason"]
    doc = res.documents.filter(pl.col("id") == "a").row(0, named=True)
    assert doc["status"] == "failed" and doc["raw_text"] == "still not json"


def test_short_mode_schema_has_no_reasoning_and_is_accepted():
    def short(req: ChatRequest) -> str:
        props = req.json_schema["properties"]["pneumonia"]["properties"]
        assert "reasoning" not in props
        return json.dumps({"pneumonia": {"status": "negative", "location": "not mentioned"}})

    res = label_documents_hybrid(_docs(), FakeEngine("m", responder=short), mode="short")
    row = res.labels.filter((pl.col("id") == "a") & (pl.col("lesion") == "pneumonia")).row(
        0, named=True
    )
    assert (row["status"], row["source"]) == ("negative", "llm") and "short mode" in row[
        "rationale"
    ]
    assert HybridTask(load_hybrid_prompt(), Labeler.short).schema_sha256 != (
        HybridTask(load_hybrid_prompt(), Labeler.cot).schema_sha256
    )
    assert "reasoning" not in json.dumps(short_schema(("pneumonia",)))


def test_hybrid_answers_are_cached(tmp_path):
    first = Recorder()
    label_documents_hybrid(_docs(), first.engine, cache_dir=tmp_path / "cache")
    again = Recorder()
    res = label_documents_hybrid(_docs(), again.engine, cache_dir=tmp_path / "cache")
    assert len(first.requests) == 1 and again.requests == [] and res.counts["cached"] == 1


def test_prompt_is_versioned_data():
    hp = load_hybrid_prompt(1)
    raw = read_bytes("prompts", "label_lesions", "hybrid_v1.json")
    assert hp.version == 1 and len(hp.sha256) == 64 and json.loads(raw)["modes"]["short"]
    assert [load_hybrid_prompt(v).version for v in (2, 3)] == [2, 3]
    assert load_hybrid_prompt(2).sha256 != hp.sha256


# ---------------------------------------------------------------------------- CLI


@pytest.fixture
def src(tmp_path):
    p = tmp_path / "docs.csv"
    _docs({k: v for k, v in TEXTS.items() if k != "d"}).write_csv(p)
    return p


def _fake_engine(monkeypatch, rec: Recorder) -> None:
    monkeypatch.setattr("cxrctx.labeling.stage.make_engine", lambda spec: rec.engine)


@pytest.mark.parametrize("mode", ["cot", "short", "llm"])
def test_cli_modes(monkeypatch, tmp_path, src, mode):
    rec = Recorder()
    if mode == "short":
        rec = Recorder(
            lambda req: json.dumps({"pneumonia": {"status": "positive", "location": "right"}})
        )
    _fake_engine(monkeypatch, rec)
    out = tmp_path / "o"
    args = ["label-lesions", str(src), "--out", str(out), "--model", "/x.gguf"]
    r = runner.invoke(app, [*args, *([] if mode == "cot" else ["--mode", mode])])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    labels = read_shards(out / "labels")
    assert labels.height == 14 * 3 and dict(labels.schema)["evidence"] == pl.List(
        pl.Struct({"start": pl.Int64, "end": pl.Int64, "text": pl.String})
    )
    if mode == "llm":
        assert m["config"]["mode"] == "llm" and m["counts"]["llm_called"] == 2
        assert set(labels["source"]) == {"llm", "not_candidate", "no_candidate"}
        return
    assert m["config"]["mode"] == mode and m["counts"]["llm"] == 1 and m["counts"]["rules"] == 4
    assert m["config"]["prompt_sha256"] == load_hybrid_prompt().sha256 and len(rec.requests) == 1
    assert "hybrid" in r.output and "by the LLM 1" in r.output


def test_cli_hybrid_failure_exits_1_and_dry_run_calls_nothing(monkeypatch, tmp_path, src):
    rec = Recorder("nope", "nope")
    _fake_engine(monkeypatch, rec)
    out = tmp_path / "o"
    r = runner.invoke(app, ["label-lesions", str(src), "--out", str(out), "--model", "/x.gguf"])
    assert r.exit_code == 1 and "1 document(s) failed" in r.output
    assert json.loads((out / "manifest.json").read_text())["counts"]["failed"] == 1
    dry = Recorder()
    _fake_engine(monkeypatch, dry)
    r = runner.invoke(
        app,
        [
            "label-lesions",
            str(src),
            "--out",
            str(tmp_path / "d"),
            "--model",
            "/x.gguf",
            "--dry-run",
        ],
    )
    assert r.exit_code == 0 and "Answer for: pneumonia" in r.output and dry.requests == []
    assert not (tmp_path / "d").exists()


def test_good_answer_helper_covers_only_asked_lesions():
    req = ChatRequest(messages=[], json_schema={"required": ["pneumonia"]})
    assert list(json.loads(good_answer(req))) == ["pneumonia"] and "pneumonia" in LESIONS


@pytest.mark.slow
def test_smollm_hybrid_plumbing():
    """The tiny real model through the hybrid path: each asked document is labeled by the
    model (source llm) or is a failure row with its reason, never a silent rule reading."""
    from cxrctx.llm import get_engine

    eng = get_engine("llamacpp", smollm_gguf(), n_ctx=2048, n_threads=2, grammar="always")
    try:
        res = label_documents_hybrid(_docs(), eng, mode="short")
    finally:
        eng.close()
    c = res.counts
    assert c["llm_called"] == 1 and c["llm"] + c["llm_failed_lesions"] == 1
    if c["llm"]:
        row = res.labels.filter(pl.col("source") == "llm").row(0, named=True)
        assert row["lesion"] == "pneumonia" and row["model"].endswith(".gguf")
    else:
        assert res.failures.filter(pl.col("id") == "a").height == 1
