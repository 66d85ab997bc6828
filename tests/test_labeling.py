"""label_documents / label_lesions plumbing with scripted engines (no model needed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from _llm_helpers import TEXTS, docs_frame, good_answer, scripted, truncated
from typer.testing import CliRunner

from cxrctx.cli import app
from cxrctx.errors import CxrctxError
from cxrctx.io import host_name, read_manifest, read_shards, write_shards, write_stage_manifest
from cxrctx.labeling import label_documents, label_lesions, load_documents, schema_sha256
from cxrctx.labeling.llm_labeler import NO_CANDIDATE, NOT_CANDIDATE
from cxrctx.llm import Sampling, get_engine
from cxrctx.llm.base import Completion
from cxrctx.llm.fake import FakeEngine
from cxrctx.models import LesionLabel
from cxrctx.vocab import LESIONS

runner = CliRunner()


def test_long_form_rows_provenance_and_counts():
    eng = scripted()
    res = label_documents(docs_frame(), eng, sampling=Sampling(max_tokens=64))
    c = res.counts
    # s5 empty; s2 mentions no lesion (skipped); s1 == s4 labeled once
    assert c["documents"] == 6 and c["empty"] == 1 and c["no_candidate"] == 1
    assert c["labeled"] == 5 and c["failed"] == 0 and c["llm_called"] == 4
    assert eng.calls == 3 == c["engine_requests"]  # s1/s4 dedup, s2 skipped
    assert res.labels.height == 14 * 5
    for _doc_id, g in res.labels.group_by("id"):
        assert g["lesion"].to_list() == list(LESIONS)
    for row in res.labels.head(14).select(list(LesionLabel.model_fields)).iter_rows(named=True):
        LesionLabel.model_validate(row)
    assert res.labels["schema_sha256"].unique().to_list() == [schema_sha256()]
    assert json.loads(res.labels["sampling"][0])["max_tokens"] == 64
    assert set(res.labels["backend"]) == {"fake"} and set(res.labels["model"]) == {"scripted"}
    s2 = res.labels.filter(pl.col("id") == "s2")
    assert set(s2["status"]) == {"negative"} and set(s2["rationale"]) == {NO_CANDIDATE}
    assert not any(s2["llm_called"])
    s1 = res.labels.filter(pl.col("id") == "s1")
    pos = s1.filter(pl.col("status") == "positive")["lesion"].to_list()
    assert pos == [
        "pleural effusion",
        "pneumothorax",
        "pneumonia",
    ]  # the candidates the model decided
    assert set(s1.filter(pl.col("source") == "not_candidate")["rationale"]) == {NOT_CANDIDATE}
    assert res.failures.filter(pl.col("id") == "s5")["reason"].to_list() == ["empty text"]
    docs = res.documents
    assert docs.height == 6 and docs.filter(pl.col("id") == "s2")["status"][0] == "skipped"


def test_repair_retry_fixes_a_bad_first_answer():
    eng = scripted("```json\n{oops", lambda r: good_answer(r))
    res = label_documents(docs_frame({"a": "Small right pleural effusion."}), eng)
    assert res.counts["labeled"] == 1 and res.counts["failed"] == 0
    assert res.documents["attempts"][0] == 2
    # the repair request carries the bad answer and the reason back to the model
    assert eng.calls == 2


def test_failure_after_repair_is_recorded_not_negative():
    eng = scripted(truncated(), good_answer, truncated())
    res = label_documents(
        docs_frame({"a": "Small right pleural effusion.", "b": "Heart is enlarged."}), eng
    )
    assert res.counts["failed"] == 1 and res.counts["labeled"] == 1
    f = res.failures.row(0, named=True)
    assert f["id"] == "a" and "truncated" in f["reason"] and f["attempts"] == 2
    assert f["raw_text"].startswith('{"pleural effusion"')
    assert res.labels.filter(pl.col("id") == "a").height == 0  # no silent negatives


def test_wrong_enum_and_missing_lesion_fail_with_reason():
    bad_enum = json.dumps(
        {"pleural effusion": {"reasoning": "x", "status": "maybe", "location": "left"}}
    )
    res = label_documents(
        docs_frame({"a": "Small right pleural effusion. Heart is enlarged."}),
        scripted(bad_enum, "{}"),
    )
    r = res.failures["reason"][0]
    assert (
        "missing candidate lesion(s): cardiomegaly" in r
        and "(got 'maybe')" in r
        and "after repair" in r
    )


def test_engine_error_is_a_transient_failure_row_not_cached(tmp_path):
    err = Completion(text="", finish_reason="error", error="boom", error_kind="transient")
    res = label_documents(docs_frame({"a": "Edema."}), scripted(err), cache_dir=tmp_path / "c")
    assert res.counts["failed"] == 1 and res.counts["transient_failed"] == 1
    f = res.failures.row(0, named=True)
    assert "engine error: boom" in f["reason"] and f["transient"] and f["attempts"] == 1
    eng = scripted()  # a re-run asks again and succeeds
    res = label_documents(docs_frame({"a": "Edema."}), eng, cache_dir=tmp_path / "c")
    assert eng.calls == 1 and res.counts["labeled"] == 1 and res.counts["failed"] == 0


def test_rejected_request_is_a_final_failure_and_cached(tmp_path):
    err = Completion(text="", finish_reason="error", error="400 too long", error_kind="rejected")
    label_documents(docs_frame({"a": "Edema."}), scripted(err), cache_dir=tmp_path / "c")
    eng = scripted()
    res = label_documents(docs_frame({"a": "Edema."}), eng, cache_dir=tmp_path / "c")
    assert eng.calls == 0 and res.counts["failed"] == 1 and res.counts["cached"] == 1


def test_duplicate_ids_are_reported():
    df = pl.DataFrame({"id": ["x", "x"], "text": ["Edema.", "Mass."]})
    res = label_documents(df, scripted())
    assert res.counts["duplicate_id"] == 1 and "duplicate id" in res.failures["reason"][0]
    assert res.labels["id"].unique().to_list() == ["x"]


def test_cache_second_run_makes_no_engine_calls(tmp_path):
    label_documents(docs_frame(), scripted(), cache_dir=tmp_path / "cache")
    eng = scripted()
    res = label_documents(docs_frame(), eng, cache_dir=tmp_path / "cache")
    assert eng.calls == 0 and res.counts["cached"] == 4 and res.counts["labeled"] == 5
    # a different sampling (or model/prompt) is a different key
    eng2 = scripted()
    label_documents(
        docs_frame(), eng2, cache_dir=tmp_path / "cache", sampling=Sampling(max_tokens=99)
    )
    assert eng2.calls == 3


def _write_inputs(tmp_path: Path) -> Path:
    p = tmp_path / "docs.csv"
    pl.DataFrame({"rid": list(TEXTS), "report": list(TEXTS.values())}).write_csv(p)
    return p


def test_label_lesions_outputs_are_deterministic_and_manifested(tmp_path):
    src = _write_inputs(tmp_path)
    runs = []
    for name in ("a", "b"):
        run = label_lesions(
            src,
            tmp_path / name,
            engine=scripted(),
            id_column="rid",
            text_column="report",
        )
        runs.append(run)
    a, b = (
        (tmp_path / "a" / "labels" / "part-00000.parquet"),
        (tmp_path / "b" / "labels" / "part-00000.parquet"),
    )
    assert a.read_bytes() == b.read_bytes()
    m = read_manifest(tmp_path / "a" / "manifest.json")
    assert m.stage == "label-lesions" and m.counts["labeled"] == 5
    assert m.config["schema_sha256"] == schema_sha256() and m.config["prompt_sha256"]
    assert m.config["sampling"]["max_tokens"] == 512 and m.shards[0].rows == 70
    assert m.counts["engine_requests"] == 3 and m.config["engine_options"]["base_url"] is None
    assert {t.path for t in m.tables} == {
        "documents/part-00000.parquet",
        "failures/part-00000.parquet",
    }


def test_shards_partition_and_merge(tmp_path):
    src = _write_inputs(tmp_path)
    full = label_lesions(
        src,
        tmp_path / "full",
        engine=scripted(),
        id_column="rid",
        text_column="report",
    )
    for i in range(3):
        label_lesions(
            src,
            tmp_path / "sh",
            engine=scripted(),
            id_column="rid",
            text_column="report",
            shard=f"{i}/3",
        )
    merged = read_shards(tmp_path / "sh" / "labels").sort("id", "lesion")
    assert merged.equals(full.result.labels.sort("id", "lesion"))
    assert len(list((tmp_path / "sh").glob("manifest-shard-*.json"))) == 3
    with pytest.raises(CxrctxError, match="shard"):
        label_lesions(
            src,
            tmp_path / "x",
            engine=scripted(),
            shard="3/3",
            id_column="rid",
            text_column="report",
        )


def write_priors(folder: Path, df: pl.DataFrame) -> Path:
    """A finished build-priors folder (records shards + manifest) holding `df`."""
    shards = write_shards(df, folder / "records", rows_per_shard=1000, relative_to=folder)
    write_stage_manifest(folder, stage="build-priors", schema_version=1, config={}, shards=shards)
    return folder


def test_records_dir_input_uses_sections(tmp_path):
    write_priors(
        tmp_path / "priors",
        pl.DataFrame(
            {
                "study_id": [501, 502],
                "findings": ["Small left effusion.", None],
                "impression": ["No edema.", "  "],
                "indication": ["Cough", "Fever"],
            }
        ),
    )
    ld = load_documents(tmp_path / "priors")
    assert ld.docs["id"].to_list() == ["501", "502"]
    assert ld.docs["text"][0] == "FINDINGS: Small left effusion.\n\nIMPRESSION: No edema."
    assert ld.docs["text"][1] == ""
    run = label_lesions(
        tmp_path / "priors",
        tmp_path / "out",
        engine=scripted(),
        sections=["indication"],
    )
    assert run.result.counts["no_candidate"] == 2
    with pytest.raises(CxrctxError, match="lack column"):
        load_documents(tmp_path / "priors", sections=["technique"])


def test_table_inputs_and_their_errors(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"id": 1, "text": "Edema."}\n{"id": 2, "text": "Mass."}\n')
    assert load_documents(p).docs["id"].to_list() == ["1", "2"]
    with pytest.raises(CxrctxError, match=r"d\.jsonl: no column 'report'"):
        load_documents(p, text_column="report")
    with pytest.raises(CxrctxError, match="not found"):
        load_documents(tmp_path / "missing.csv")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(CxrctxError, match="unsupported"):
        load_documents(tmp_path / "x.txt")


def test_get_engine_errors():
    with pytest.raises(CxrctxError, match="unknown backend"):
        get_engine("nope", "m")
    with pytest.raises(CxrctxError, match="does not take"):
        get_engine("fake", "m", n_threads=2)
    with pytest.raises(CxrctxError, match="GGUF model file not found"):
        pytest.importorskip("llama_cpp")
        get_engine("llamacpp", "/nonexistent/model.gguf")


def test_cli_dry_run_calls_nothing(tmp_path):
    src = _write_inputs(tmp_path)
    r = runner.invoke(
        app,
        [
            "label-lesions",
            str(src),
            "--out",
            str(tmp_path / "o"),
            "--backend",
            "llamacpp",
            "--model",
            "/nope.gguf",
            "--mode",
            "llm",
            "--id-column",
            "rid",
            "--text-column",
            "report",
            "--dry-run",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "CANDIDATES: pleural effusion, pneumothorax, pneumonia" in r.output
    assert '"reasoning"' in r.output and "nothing was called" in r.output
    assert not (tmp_path / "o").exists()


def test_cli_user_errors_exit_cleanly(tmp_path):
    r = runner.invoke(
        app,
        ["label-lesions", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o"), "--model", "m"],
    )
    assert (
        r.exit_code == 2 and "none.csv: input not found" in r.output and "Traceback" not in r.output
    )
    src = _write_inputs(tmp_path)
    r = runner.invoke(
        app,
        [
            "label-lesions",
            str(src),
            "--out",
            str(tmp_path / "o"),
            "--model",
            "/no/such.gguf",
            "--id-column",
            "rid",
            "--text-column",
            "report",
        ],
    )
    assert r.exit_code == 2 and "error:" in r.output


def test_cli_does_not_offer_the_fake_backend(tmp_path):
    """The fake engine writes normal-looking labels: tests and the Python API only."""
    src = _write_inputs(tmp_path)
    r = runner.invoke(
        app,
        [
            "label-lesions",
            str(src),
            "--out",
            str(tmp_path / "o"),
            "--backend",
            "fake",
            "--model",
            "m",
            "--id-column",
            "rid",
            "--text-column",
            "report",
        ],
    )
    assert r.exit_code == 2 and "fake" in r.output and "llamacpp" in r.output
    assert not (tmp_path / "o").exists()


KILL_SCRIPT = """
import sys, time, json
sys.path.insert(0, {tests!r})
from _llm_helpers import good_answer
from cxrctx.llm.fake import FakeEngine
from cxrctx.labeling import label_lesions

def slow(req):
    time.sleep(0.15)
    return good_answer(req)

label_lesions({src!r}, {out!r}, engine=FakeEngine("m", responder=slow), batch_size=2)
"""


def test_resume_after_sigkill_loses_at_most_the_batch_in_flight(tmp_path):
    n = 40
    src = tmp_path / "many.csv"
    pl.DataFrame(
        {
            "id": [str(i) for i in range(n)],
            "text": [f"Report {i}: small left pleural effusion." for i in range(n)],
        }
    ).write_csv(src)
    out = tmp_path / "out"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), src=str(src), out=str(out))
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.time() + 60
        done = 0
        while time.time() < deadline:
            files = list((out / "cache").glob("*.jsonl")) if (out / "cache").exists() else []
            done = sum(f.read_bytes().count(b"\n") for f in files)
            if done >= 6:
                break
            time.sleep(0.05)
        assert done >= 6, proc.stderr.read().decode() if proc.poll() is not None else "no progress"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()
    cached = sum(f.read_bytes().count(b"\n") for f in (out / "cache").glob("*.jsonl"))
    assert 6 <= cached < n
    eng = FakeEngine("m", responder=good_answer)
    run = label_lesions(src, out, engine=eng, batch_size=2)
    assert eng.calls == n - cached  # nothing finished was recomputed
    assert run.result.counts["cached"] == cached and run.result.counts["labeled"] == n
    assert read_shards(out / "labels").height == 14 * n


def test_prepass_candidates_consistent_with_synth(synth_root_small):
    """Consistency check, not a recall claim: the generator writes its positives with the
    lexicon the pre-pass reads, so a truth-positive lesion the pre-pass misses (it would
    silently become 'not mentioned') means the two drifted apart."""
    from cxrctx.labeling import load_prompt

    prompt = load_prompt()
    truth = read_shards(synth_root_small / "truth" / "labels").filter(
        pl.col("status") == "positive"
    )
    assert truth.height > 10
    missed = [
        (r["lesion"], r["rationale"])
        for r in truth.iter_rows(named=True)
        if r["lesion"] not in prompt.candidates(r["rationale"])
    ]
    assert missed == []


def test_eval_against_synthetic_truth_with_locations(synth_root_small, tmp_path):
    truth = read_shards(synth_root_small / "truth" / "labels")
    pred = truth.with_columns(
        pl.when(pl.col("location") == "left")
        .then(pl.lit("right"))
        .otherwise(pl.col("location"))
        .alias("location")
    )
    from cxrctx.labeling import evaluate_labels

    rep = evaluate_labels(pred, truth)
    assert rep.micro_f1 == 1.0 and rep.location_accuracy is not None and rep.location_accuracy < 1.0
    js = tmp_path / "r.json"
    args = [
        "eval-labels",
        str(synth_root_small / "truth"),
        "--against",
        str(synth_root_small / "truth"),
    ]
    r = runner.invoke(app, [*args, "--json-out", str(js)])
    assert r.exit_code == 0, r.output
    assert json.loads(js.read_text())["location_accuracy"] == 1.0


def test_out_that_cannot_hold_outputs_fails_first_with_one_line(tmp_path, monkeypatch):
    src = _write_inputs(tmp_path)
    (tmp_path / "afile").write_text("x")
    eng = scripted()
    with pytest.raises(CxrctxError, match="exists and is not a directory"):
        label_lesions(src, tmp_path / "afile", engine=eng, id_column="rid", text_column="report")
    assert eng.calls == 0

    def full(self, rows):  # a disk that fills up during the run
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("cxrctx.llm.sink.ShardSink.add", full)
    with pytest.raises(CxrctxError, match=r"cannot write the outputs \(No space left on device"):
        label_lesions(src, tmp_path / "o", engine=scripted(), id_column="rid", text_column="report")
    assert not list((tmp_path / "o").rglob("*.tmp"))


def test_stale_temporary_parts_of_a_killed_run_are_removed(tmp_path):
    src = _write_inputs(tmp_path)
    label_lesions(src, tmp_path / "o", engine=scripted(), id_column="rid", text_column="report")
    # a part's temp file names its writer (host, pid); this pid is above any pid_max: gone
    stale = tmp_path / "o" / "labels" / f".part-00000.parquet~{host_name()}~4194305~part.tmp"
    stale.write_bytes(b"half a parquet file")
    label_lesions(src, tmp_path / "o", engine=scripted(), id_column="rid", text_column="report")
    assert not stale.exists() and (tmp_path / "o" / "labels" / "part-00000.parquet").exists()
