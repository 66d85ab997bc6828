"""structure-reports: the faithfulness check, the task's repair policy, the stage and CLI.

The engine is scripted (`FakeEngine`): `faithful` copies each source sentence under an
organ header, the mutations below break one rule each.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from cxrctx.cli import app
from cxrctx.io import read_manifest, read_shards, write_shards, write_stage_manifest
from cxrctx.llm.base import ChatRequest
from cxrctx.llm.fake import FakeEngine
from cxrctx.structure.check import check_structured, sentences
from cxrctx.structure.run import STRUCTURED_SCHEMA, structure_items, structure_reports
from cxrctx.structure.task import StructuredAnswer, StructureItem, load_structure_prompt
from cxrctx.vocab import SRRG_ORGAN_KEYS, SRRG_ORGANS

runner = CliRunner()
FINDINGS = (
    "Heart size is normal. There is a small left pleural effusion measuring 2 cm. "
    "No pneumothorax. Right IJ catheter tip in the SVC. Mild degenerative changes of the spine."
)
IMPRESSION = "Small left pleural effusion. No acute process."
ROUTES = (
    ("Tubes, Catheters, and Support Devices", "catheter"),
    ("Pleura", "effusion|pneumothorax"),
    ("Cardiovascular", "heart"),
    ("Musculoskeletal and Chest Wall", "spine|rib"),
    ("Lungs and Airways", "lung|opacit|pneumonia"),
)


def route(findings: str, impression: str) -> dict[str, list[str]]:
    """A faithful answer: every sentence copied under its organ (keyword routing)."""
    ans: dict[str, list[str]] = {o: [] for o in SRRG_ORGANS}
    for s in sentences(findings):
        organ = next((o for o, pat in ROUTES if re.search(pat, s.lower())), "Other")
        ans[organ].append(s)
    ans["Impression"] = sentences(impression)
    return ans


def source_of(req: ChatRequest) -> tuple[str, str]:
    user = next(
        m["content"] for m in reversed(req.messages) if m["content"].startswith("FINDINGS:")
    )
    m = re.match(r"FINDINGS:\n(.*)\n\nIMPRESSION:\n(.*?)\n\n(?:DRAFT|Answer)", user, re.S)
    assert m, user
    f, i = m.groups()
    return ("" if f == "(none)" else f), ("" if i == "(none)" else i)


def faithful(req: ChatRequest) -> str:
    return json.dumps(route(*source_of(req)))


def mutated(fn) -> callable:
    def responder(req: ChatRequest) -> str:
        ans = route(*source_of(req))
        fn(ans)
        return json.dumps(ans)

    return responder


def scripted(*answers) -> FakeEngine:
    queue = list(answers)
    seen: list[ChatRequest] = []

    def responder(req: ChatRequest) -> str:
        seen.append(req)
        a = queue.pop(0) if queue else faithful
        return a(req) if callable(a) else a

    eng = FakeEngine("scripted", responder=responder)
    eng.seen = seen  # type: ignore[attr-defined]
    return eng


def _check(ans: dict[str, list[str]], findings: str = FINDINGS, impression: str = IMPRESSION):
    a = StructuredAnswer.model_validate(ans)
    return check_structured(
        findings, impression, a.findings_bullets(), a.impression, organs=a.organs()
    )


# ---------------------------------------------------------------------------- the check


def test_faithful_answer_passes_the_check():
    res = _check(route(FINDINGS, IMPRESSION))
    assert res.passed, res.reason
    assert res.n_bullets == 7 and res.n_sentences == 7
    assert res.coverage == 1.0 and res.min_support == 1.0


@pytest.mark.parametrize("version", [1, 2])
def test_the_prompt_example_passes_the_check(version):
    ex = load_structure_prompt(version).data["examples"][0]
    res = _check(ex["answer"], ex["findings"], ex["impression"])
    assert res.passed, res.reason


def test_the_rewrite_prompt_shows_the_rules_draft_of_its_example():
    """v2's worked example starts from what the rules really draft for its report."""
    from cxrctx.structure.rules import structure_by_rules

    ex = load_structure_prompt(2).data["examples"][0]
    draft, check = structure_by_rules(ex["findings"], ex["impression"])
    assert check.passed and draft.model_dump(by_alias=True) == ex["draft"]


def _replace(organ: str, old: str, new: str):
    def fn(ans):
        ans[organ] = [b.replace(old, new) for b in ans[organ]]

    return fn


MUTATIONS = {
    "unsupported_bullet": lambda a: a["Hila and Mediastinum"].append(
        "Hilar contours are within normal limits."
    ),
    "dropped_sentence": lambda a: a["Musculoskeletal and Chest Wall"].clear(),
    "changed_laterality": _replace("Pleura", "left", "right"),
    "changed_numbers": _replace("Pleura", "2 cm", "3 cm"),
    "changed_negation": _replace("Musculoskeletal and Chest Wall", "Mild", "No"),
    "changed_label": _replace("Pleura", "No pneumothorax", "Small pneumothorax"),
    "wrong_organ": lambda a: a["Cardiovascular"].append(a["Pleura"].pop(0)),
}


@pytest.mark.parametrize("code", list(MUTATIONS))
def test_each_check_path_fails_with_its_reason(code):
    ans = route(FINDINGS, IMPRESSION)
    MUTATIONS[code](ans)
    res = _check(ans)
    assert not res.passed and code in res.codes, res.reason
    # the reason leads with the first problem and names every other one
    assert res.reason.startswith(f"{res.codes[0]}: ") and all(c in res.reason for c in res.codes)


def test_unsupported_bullet_is_the_only_problem_of_an_invented_neutral_sentence():
    ans = route(FINDINGS, IMPRESSION)
    MUTATIONS["unsupported_bullet"](ans)
    res = _check(ans)
    assert res.codes == ["unsupported_bullet"]
    assert res.reason.startswith("unsupported_bullet: 'Hilar contours")


def test_dropping_a_negated_finding_changes_its_label():
    """ "No pneumothorax." shares no status with an unmentioned lesion's reading, only
    'mentioned': dropping it is caught even though the sentence is short."""
    ans = route(FINDINGS, IMPRESSION)
    ans["Pleura"] = [b for b in ans["Pleura"] if "pneumothorax" not in b]
    res = _check(ans)
    assert "changed_label" in res.codes and "pneumothorax" in res.changed_lesions


def test_a_finding_moved_to_the_impression_is_unsupported_there():
    ans = route(FINDINGS, IMPRESSION)
    ans["Impression"].append(ans["Cardiovascular"].pop())
    res = _check(ans)
    assert {"unsupported_bullet", "dropped_sentence"} <= set(res.codes)


def test_splitting_a_sentence_in_two_bullets_passes():
    ans = route(FINDINGS, IMPRESSION)
    ans["Pleura"] = ["There is a small left pleural effusion measuring 2 cm.", "No pneumothorax."]
    f = FINDINGS.replace(
        "There is a small left pleural effusion measuring 2 cm. No pneumothorax.",
        "There is a small left pleural effusion measuring 2 cm and no pneumothorax.",
    )
    assert _check(ans, f).passed


# ---------------------------------------------------------------------------- the task


def _items() -> list[StructureItem]:
    return [StructureItem("1", FINDINGS, IMPRESSION)]


def test_repair_then_pass_counts_after_repair():
    eng = scripted(mutated(MUTATIONS["changed_laterality"]), faithful)
    res = structure_items(_items(), eng)
    c = res.counts
    assert (c["structured"], c["passed_after_repair"], c["passed_first_time"], c["failed"]) == (
        1,
        1,
        0,
        0,
    )
    assert eng.calls == 2 and c["repair_requests"] == 1
    repair = eng.seen[1].messages[-1]["content"]
    assert "faithfulness check" in repair and "changed_laterality" in repair
    row = res.frames["structured"].row(0, named=True)
    assert row["repaired"] and row["attempts"] == 2
    assert row["pleura"] == [
        "There is a small left pleural effusion measuring 2 cm.",
        "No pneumothorax.",
    ]
    assert row["structured_impression"] == "1. Small left pleural effusion.\n2. No acute process."
    assert row["structured_findings"].startswith("Pleura:\n- There is a small left")
    assert row["structured_report"] == (
        f"FINDINGS:\n\n{row['structured_findings']}\n\nIMPRESSION:\n\n{row['structured_impression']}"
    )


def test_repair_then_fail_from_scratch_is_a_failure_row_not_a_report():
    """Prompt v1 structures from scratch: no draft to fall back to."""
    bad = mutated(MUTATIONS["changed_numbers"])
    res = structure_items(_items(), scripted(bad, bad), prompt=1)
    assert res.counts["failed"] == 1 and res.counts["structured"] == 0
    assert res.frames["structured"].height == 0
    f = res.frames["failures"].row(0, named=True)
    assert f["reason_code"] == "changed_numbers" and f["attempts"] == 2
    assert "after repair; first: changed_numbers" in f["reason"]
    assert res.reasons == {"changed_numbers": 1} and res.counts["failed_changed_numbers"] == 1


def test_failing_rewrite_falls_back_to_the_rules_draft_counted():
    bad = mutated(MUTATIONS["wrong_organ"])
    eng = scripted(bad, bad)
    res = structure_items(_items(), eng)
    c = res.counts
    assert (c["structured"], c["failed"], c["rules_fallback"], c["by_rules"], c["by_model"]) == (
        1,
        0,
        1,
        1,
        0,
    )
    assert res.fallbacks == {"wrong_organ": 1} and c["fallback_wrong_organ"] == 1
    assert "DRAFT:" in eng.seen[0].messages[-1]["content"] and eng.calls == 2
    assert "wrong_organ" in eng.seen[1].messages[-1]["content"]
    row = res.frames["structured"].row(0, named=True)
    assert row["structured_by"] == "rules" and row["fallback_reason"].startswith("wrong_organ")
    assert row["pleura"][0] == "There is a small left pleural effusion measuring 2 cm."
    assert row["completion_tokens"] > 0  # the failed rewrite's cost is kept
    ok = structure_items(_items(), scripted()).frames["structured"].row(0, named=True)
    assert ok["structured_by"] == "model" and ok["fallback_reason"] is None


def test_invalid_json_twice_fails_as_invalid_json():
    res = structure_items(_items(), scripted("not json", '{"Pleura": '), prompt=1)
    f = res.frames["failures"].row(0, named=True)
    assert f["reason_code"] == "invalid_json" and res.counts["failed"] == 1


def test_first_time_pass_and_provenance():
    res = structure_items(_items(), scripted())
    row = res.frames["structured"].row(0, named=True)
    assert res.counts["passed_first_time"] == 1 and not row["repaired"]
    assert row["model"] == "scripted" and len(row["prompt_sha256"]) == 64
    assert row["schema_sha256"] == res.provenance["schema_sha256"]
    assert json.loads(row["sampling"])["max_tokens"] == 768
    assert set(res.frames["structured"].columns) == set(STRUCTURED_SCHEMA)


def test_schema_file_matches_the_recorded_sha():
    import hashlib

    from cxrctx.resources import read_bytes

    res = structure_items(_items(), scripted())
    data = read_bytes("schemas", "structured_answer.schema.json")
    assert hashlib.sha256(data).hexdigest() == res.provenance["schema_sha256"]
    assert set(json.loads(data)["properties"]) == {*SRRG_ORGANS, "Impression"}
    from cxrctx.structure.task import StructureTask

    sent = StructureTask(load_structure_prompt()).request(_items()[0]).json_schema
    assert list(sent["properties"]) == [*SRRG_ORGANS, "Impression"]  # the order written


# ---------------------------------------------------------------------------- the stage


def _records(tmp: Path) -> Path:
    prior_a = {
        "study_id": 10,
        "findings": "Heart size is normal. No pleural effusion.",
        "impression": "No acute disease.",
        "days_before": 30,
    }
    prior_b = {"study_id": 2, "findings": FINDINGS, "impression": IMPRESSION, "days_before": 9}
    same_text = {
        "study_id": 11,
        "findings": "Heart size is normal. No pleural effusion.",
        "impression": "No acute disease.",
        "days_before": 60,
    }
    df = pl.DataFrame(
        {
            "subject_id": [1, 1, 2],
            "study_id": [1, 2, 3],
            "findings": [FINDINGS, FINDINGS, None],
            "impression": [IMPRESSION, "No acute process.", "  "],
            "priors": [[prior_a, prior_b], [prior_a, same_text], []],
            "n_prior_studies": [2, 2, 0],
        },
        schema_overrides={
            "priors": pl.List(
                pl.Struct(
                    {
                        "study_id": pl.Int64,
                        "findings": pl.String,
                        "impression": pl.String,
                        "days_before": pl.Int64,
                    }
                )
            )
        },
    )
    shards = write_shards(df, tmp / "priors" / "records", 100, relative_to=tmp / "priors")
    write_stage_manifest(
        tmp / "priors", stage="build-priors", schema_version=1, config={}, shards=shards
    )
    return tmp / "priors"


def test_stage_writes_rows_failures_manifest_and_resumes(tmp_path):
    src = _records(tmp_path)
    eng = scripted()
    run = structure_reports(src, tmp_path / "out", engine=eng)
    c = run.result.counts
    assert (c["reports"], c["records"], c["structured"], c["empty"], c["failed"]) == (3, 3, 2, 1, 0)
    st = read_shards(tmp_path / "out" / "structured")
    assert st["study_id"].to_list() == [1, 2] and set(st["role"]) == {"record"}
    fails = read_shards(tmp_path / "out" / "failures")
    assert fails["reason_code"].to_list() == ["empty_report"] and fails["study_id"].to_list() == [3]
    m = read_manifest(tmp_path / "out" / "manifest.json")
    assert m.stage == "structure-reports" and m.counts["passed_first_time"] == 2
    assert m.config["check"]["support_min"] == 0.6 and m.counts["completion_tokens"] > 0
    assert m.shards[0].path == "structured/part-00000.parquet"
    again = structure_reports(src, tmp_path / "out", engine=(eng2 := scripted()))
    assert eng2.calls == 0 and again.result.counts["cached"] == 2
    assert again.result.counts["completion_tokens"] == 0
    st2 = read_shards(tmp_path / "out" / "structured")
    assert st2["cached"].to_list() == [True, True]
    assert st2.drop("cached").equals(st.drop("cached"))


def test_priors_are_structured_once_each(tmp_path):
    src = _records(tmp_path)
    eng = scripted()
    run = structure_reports(src, tmp_path / "out", engine=eng, priors=True)
    c = run.result.counts
    st = read_shards(tmp_path / "out" / "structured")
    # prior 2 is itself a record; prior 10 is shared by two records; 11 has 10's text
    assert sorted(st.filter(pl.col("role") == "prior")["study_id"].to_list()) == [10, 11]
    assert c["priors"] == 2 and c["records"] == 3
    assert c["unique_texts"] == 3 and eng.calls == 3  # study 1, study 2 and the one prior text
    row = st.filter(pl.col("study_id") == 11).row(0, named=True)
    assert row[SRRG_ORGAN_KEYS["Pleura"]] == ["No pleural effusion."]


def test_bad_input_is_one_line_error(tmp_path):
    from cxrctx.errors import CxrctxError

    with pytest.raises(CxrctxError, match="input not found"):
        structure_reports(tmp_path / "nope", tmp_path / "o", engine=scripted())
    pl.DataFrame({"id": ["1"], "text": ["x"]}).write_parquet(tmp_path / "t.parquet")
    with pytest.raises(CxrctxError, match=r"no column.*findings"):
        structure_reports(tmp_path / "t.parquet", tmp_path / "o", engine=scripted())


# ---------------------------------------------------------------------------- CLI


def _cli(tmp: Path, src: Path, eng: FakeEngine, monkeypatch, *extra: str):
    monkeypatch.setattr("cxrctx.structure.run.make_engine", lambda spec: eng)
    return runner.invoke(
        app, ["structure-reports", str(src), "--out", str(tmp / "o"), "--model", "m.gguf", *extra]
    )


def test_cli_runs_and_exits_1_on_failure(tmp_path, monkeypatch):
    src = tmp_path / "r.csv"
    pl.DataFrame(
        {
            "uid": ["7", "8"],
            "findings": [FINDINGS, FINDINGS],
            "impression": [IMPRESSION, "No acute process."],
        }
    ).write_csv(src)
    bad = mutated(MUTATIONS["dropped_sentence"])
    r = _cli(
        tmp_path,
        src,
        scripted(bad, bad),
        monkeypatch,
        "--id-column",
        "uid",
        "--batch-size",
        "1",
        "--prompt",
        "1",
    )
    assert r.exit_code == 1, r.output
    assert "1 structured" in r.output and "dropped_sentence 1" in r.output
    assert "--allow-failures" in r.output
    r = _cli(
        tmp_path,
        src,
        scripted(),
        monkeypatch,
        "--id-column",
        "uid",
        "--allow-failures",
        "--prompt",
        "1",
    )
    assert r.exit_code == 0, r.output
    (tmp_path / "o").rename(tmp_path / "o1")
    # prompt v2 (the default): the failing rewrite keeps the rules' draft, exit 0
    r = _cli(
        tmp_path, src, scripted(bad, bad), monkeypatch, "--id-column", "uid", "--batch-size", "1"
    )
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "2 structured" in out and "1 kept the rules' draft: dropped_sentence 1" in out


def test_cli_help_lists_backends_and_example():
    r = runner.invoke(app, ["structure-reports", "--help"])
    assert r.exit_code == 0
    assert "llamacpp" in r.output and "Example:" in r.output and "--priors" in r.output


@pytest.mark.slow
def test_tiny_gguf_plumbing(tmp_path):
    """The real llama.cpp path end to end (prompt v2: the model rewrites the rules' draft);
    the tiny model's answers may well fail the check, and then the draft is kept."""
    from _llm_helpers import smollm_gguf

    from cxrctx.llm.base import Sampling
    from cxrctx.llm.spec import EngineSpec

    spec = EngineSpec(backend="llamacpp", model=smollm_gguf(), threads=1, options={"n_ctx": 4096})
    src = _records(tmp_path)
    run = structure_reports(
        src, tmp_path / "o", engine=spec, limit=1, sampling=Sampling(max_tokens=96)
    )
    c = run.result.counts
    assert c["reports"] == 1 and c["structured"] == 1 and c["failed"] == 0
    assert c["by_model"] + c["rules_fallback"] == 1
    assert c["engine_requests"] in (1, 2) and c["completion_tokens"] > 0


def test_list_markers_are_layout_not_numbers():
    """A numbered source impression ("1. ... 2. ...") and numbered answer items pass; the
    items are stored without their markers (the layout numbers them)."""
    imp = "1. Small left pleural effusion. 2. No acute process."
    ans = route(FINDINGS, IMPRESSION)
    ans["Impression"] = ["1. Small left pleural effusion.", "2) No acute process."]
    res = _check(ans, impression=imp)
    assert res.passed, res.reason
    assert StructuredAnswer.model_validate(ans).impression == [
        "Small left pleural effusion.",
        "No acute process.",
    ]
    ans["Impression"] = ["Small left pleural effusion measuring 3 cm.", "No acute process."]
    assert "changed_numbers" in _check(ans, impression=imp).codes


def test_records_are_checked_against_their_manifest(tmp_path):
    """A build-priors shard changed after its manifest was written is refused, naming it."""
    from cxrctx.errors import CxrctxError

    src = _records(tmp_path)
    shard = src / "records" / "part-00000.parquet"
    df = pl.read_parquet(shard)
    df.with_columns(pl.lit("Changed.").alias("impression")).write_parquet(shard)
    with pytest.raises(CxrctxError, match=r"part-00000\.parquet: sha256 differs"):
        structure_reports(src, tmp_path / "out", engine=scripted())
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_output_policy_and_a_readable_stage(tmp_path):
    """The output opens as a structure-reports stage (what `release --structured` reads);
    another configuration into the same folder is refused unless overwrite."""
    from cxrctx.errors import CxrctxError
    from cxrctx.io import open_stage

    src = _records(tmp_path)
    structure_reports(src, tmp_path / "out", engine=scripted())
    st = open_stage(tmp_path / "out", "structure-reports")
    assert st.read()["study_id"].to_list() == [1, 2]
    assert all(i.path.startswith("build-priors/records/") for i in st.manifest.inputs)
    with pytest.raises(CxrctxError, match=r"another structure-reports run.*--overwrite"):
        structure_reports(src, tmp_path / "out", engine=scripted(), priors=True)
    run = structure_reports(src, tmp_path / "out", engine=scripted(), priors=True, overwrite=True)
    assert run.result.counts["priors"] == 2 and run.result.counts["cached"] == 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(CxrctxError, match="not a cxrctx output"):
        structure_reports(src, tmp_path / "other", engine=scripted(), overwrite=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_cli_lists_overwrite_and_executor_options(tmp_path, monkeypatch):
    r = runner.invoke(app, ["structure-reports", "--help"])
    assert "--overwrite" in r.output and "--executor" in r.output and "--workers" in r.output
    src = _records(tmp_path)
    r = _cli(tmp_path, src, scripted(), monkeypatch, "--workers", "2")
    assert r.exit_code != 0 and "apply to --executor ray only" in r.output
    r = _cli(tmp_path, src, scripted(), monkeypatch, "--executor", "local")
    assert r.exit_code == 0, r.output


def test_plan_projects_from_a_sample_and_reads_the_same_from_cache(tmp_path, monkeypatch):
    from cxrctx.structure.plan import plan_structure_reports

    src = _records(tmp_path)
    eng = scripted()
    plan = plan_structure_reports(src, tmp_path / "out", engine=eng, sample=2)
    assert (plan.sample_documents, plan.total_documents, plan.llm_documents) == (2, 3, 2)
    assert plan.llm_calls == eng.calls == 2 and plan.output_tokens > 0
    assert plan.projected_output_tokens == round(plan.output_tokens / 2 * 3)
    assert (tmp_path / "out" / "plan-sample" / "plan.json").is_file()
    again = plan_structure_reports(src, tmp_path / "out", engine=(eng2 := scripted()), sample=2)
    assert eng2.calls == 0 and again == plan
    run = structure_reports(src, tmp_path / "out", engine=scripted())  # the full run resumes
    assert run.result.counts["structured"] == 2
    r = _cli(tmp_path, src, scripted(), monkeypatch, "--plan", "--plan-sample", "1")
    assert r.exit_code == 0, r.output
    assert "projected GPU-hours" in r.output and not (tmp_path / "o" / "manifest.json").exists()
