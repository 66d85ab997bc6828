"""structure-reports without a model: the organ vocabulary, the rules structurer, organ
placement in the check, and the stage / CLI default on synthetic and bundled data."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from cxrctx.cli import app
from cxrctx.io import read_manifest, read_shards
from cxrctx.structure.check import check_structured
from cxrctx.structure.rules import draft, structure_by_rules
from cxrctx.structure.run import structure_items_rules, structure_reports
from cxrctx.structure.task import StructuredAnswer, StructureItem
from cxrctx.vocab import LESION_ORGANS, LESIONS, SRRG_ORGANS, organ_of, organs_named

runner = CliRunner()
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "mimic-mini"

# ---------------------------------------------------------------------------- vocabulary


@pytest.mark.parametrize(
    ("text", "organs"),
    [
        ("Small left pleural effusion.", ("Pleura",)),
        ("No pneumothorax.", ("Pleura",)),
        ("Apical pleural thickening.", ("Pleura",)),
        ("Mild cardiomegaly.", ("Cardiovascular",)),
        ("The cardiac silhouette is normal.", ("Cardiovascular",)),
        ("Tortuous thoracic aorta.", ("Cardiovascular",)),
        ("Pulmonary vascularity is normal.", ("Cardiovascular",)),
        ("The hila are normal.", ("Hila and Mediastinum",)),
        ("Mediastinal contours are unremarkable.", ("Hila and Mediastinum",)),
        ("Left-sided pacemaker with leads in place.", ("Tubes, Catheters, and Support Devices",)),
        ("Right IJ catheter tip in the SVC.", ("Tubes, Catheters, and Support Devices",)),
        ("NG tube in the stomach.", ("Tubes, Catheters, and Support Devices",)),
        (
            "Chest tube with a small residual pneumothorax.",
            ("Pleura", "Tubes, Catheters, and Support Devices"),
        ),
        ("Degenerative changes of the thoracic spine.", ("Musculoskeletal and Chest Wall",)),
        ("Old healed left rib fractures.", ("Musculoskeletal and Chest Wall",)),
        ("Small hiatal hernia.", ("Abdominal",)),
        ("No free air under the diaphragm.", ("Abdominal",)),
        ("Right lower lobe consolidation.", ("Lungs and Airways",)),
        ("Kerley B lines.", ("Lungs and Airways",)),
        ("No acute cardiopulmonary abnormality.", ()),
        (
            "Heart size and mediastinal contours are normal.",
            ("Cardiovascular", "Hila and Mediastinum"),
        ),
    ],
)
def test_organs_named(text, organs):
    assert organs_named(text) == organs
    assert organ_of(text) == (organs or ("Other",))


def test_every_lesion_has_an_organ_header():
    assert set(LESION_ORGANS) == set(LESIONS)
    assert set(LESION_ORGANS.values()) <= set(SRRG_ORGANS)
    lung = {
        "emphysema",
        "nodule",
        "atelectasis",
        "mass",
        "edema",
        "consolidation",
        "infiltration",
        "fibrosis",
        "pneumonia",
    }
    assert {k for k, v in LESION_ORGANS.items() if v == "Lungs and Airways"} == lung


# ---------------------------------------------------------------------------- rules

FINDINGS = (
    "Heart size is normal and the lungs are clear. There is a small left pleural effusion "
    "measuring 2 cm. No pneumothorax. Right IJ catheter tip in the SVC. Mild degenerative "
    "changes of the spine. No focal consolidation, pleural effusion, or pneumothorax. "
    "Dictated by XXXX."
)
IMPRESSION = "1. Small left pleural effusion. 2. No acute process."


def test_rules_place_each_sentence_under_its_organ_and_number_the_impression():
    ans, check = structure_by_rules(FINDINGS, IMPRESSION)
    assert check.passed, check.reason
    o = ans.organs()
    assert o["Pleura"][:2] == [
        "There is a small left pleural effusion measuring 2 cm.",
        "No pneumothorax.",
    ]
    assert o["Tubes, Catheters, and Support Devices"] == ["Right IJ catheter tip in the SVC."]
    assert o["Musculoskeletal and Chest Wall"] == ["Mild degenerative changes of the spine."]
    assert o["Other"] == ["Dictated by XXXX."]
    assert ans.impression == ["Small left pleural effusion.", "No acute process."]
    assert ans.render_impression() == "1. Small left pleural effusion.\n2. No acute process."


def test_two_organ_sentence_is_split_at_its_clause_boundary():
    """ "and the" is a scope terminator of the shared lexicon: the clauses are separate."""
    o = structure_by_rules(FINDINGS, IMPRESSION)[0].organs()
    assert o["Cardiovascular"] == ["Heart size is normal."]
    assert o["Lungs and Airways"][0] == "Lungs are clear."


def test_a_negated_list_naming_two_organs_is_placed_under_each_not_split():
    """Splitting "No focal consolidation, pleural effusion, or pneumothorax." would lose
    the negation of its later items: the sentence goes whole under both organs."""
    o = structure_by_rules(FINDINGS, IMPRESSION)[0].organs()
    s = "No focal consolidation, pleural effusion, or pneumothorax."
    assert s in o["Lungs and Airways"] and s in o["Pleura"]


def test_a_split_that_fails_the_check_is_not_made():
    """A clause after "but there is" affirms; one that only followed a negation is kept
    with it: the negated finding never becomes a bare bullet."""
    f = "No pleural effusion, but there is cardiomegaly."
    ans, check = structure_by_rules(f, "")
    assert check.passed, check.reason
    o = ans.organs()
    assert o["Pleura"] == ["No pleural effusion."] and o["Cardiovascular"] == ["Cardiomegaly."]
    unsplit = draft(f, "", split=False).organs()
    assert unsplit["Pleura"] == unsplit["Cardiovascular"] == [f]


def test_rules_answer_is_checked_and_would_fail_if_unfaithful():
    """The rules' answer goes through the same check: moving one of its bullets to
    another organ, or changing a side, fails."""
    ans, _ = structure_by_rules(FINDINGS, IMPRESSION)
    organs = ans.organs()
    organs["Cardiovascular"].append(organs["Pleura"].pop(0))
    res = check_structured(
        FINDINGS,
        IMPRESSION,
        [b for bs in organs.values() for b in bs],
        ans.impression,
        organs=organs,
    )
    assert res.codes == ["wrong_organ"], res.reason
    assert "is about Pleura, not Cardiovascular" in res.reason


def test_wrong_organ_for_an_llm_answer_and_other_headers():
    base = {o: [] for o in SRRG_ORGANS}
    f = "Small left pleural effusion. No acute process."
    ok = StructuredAnswer.model_validate(
        base
        | {
            "Pleura": ["Small left pleural effusion."],
            "Lungs and Airways": ["No acute process."],
            "Impression": [],
        }
    )
    res = check_structured(f, "", ok.findings_bullets(), [], organs=ok.organs())
    assert res.passed, res.reason  # a bullet naming no organ may go anywhere
    bad = ok.organs() | {"Pleura": [], "Other": ["Small left pleural effusion."]}
    res = check_structured(f, "", ok.findings_bullets(), [], organs=bad)
    assert res.codes == ["wrong_organ"]
    without = check_structured(f, "", ok.findings_bullets(), [])
    assert without.passed  # placement is only judged when the organs are given


def test_empty_and_impression_only_reports():
    ans, check = structure_by_rules("", "No acute disease.")
    assert check.passed and ans.findings_bullets() == [] and ans.impression == ["No acute disease."]
    assert ans.render_report() == "IMPRESSION:\n\n1. No acute disease."


def test_structure_items_rules_counts_and_failure_rows():
    items = [
        StructureItem("1", FINDINGS, IMPRESSION),
        StructureItem("2", "", "", problem="empty_report: no findings and no impression"),
    ]
    res = structure_items_rules(items, batch_size=1)
    c = res.counts
    assert (c["reports"], c["structured"], c["by_rules"], c["empty"], c["failed"]) == (
        2,
        1,
        1,
        1,
        0,
    )
    assert c["engine_requests"] == 0 and res.cost["output_tokens"] == 0
    row = res.frames["structured"].row(0, named=True)
    assert row["structured_by"] == "rules" and row["backend"] == "rules"
    assert row["model"] == "rules-v1" and row["prompt_sha256"] is None
    assert len(row["schema_sha256"]) == 64 and row["n_bullets"] == 11
    assert res.frames["failures"]["reason_code"].to_list() == ["empty_report"]


def test_rules_with_two_worker_processes_write_the_same_rows():
    items = [
        StructureItem(str(i), FINDINGS.replace("2 cm", f"{i} cm"), IMPRESSION) for i in range(1, 40)
    ]
    one = structure_items_rules(items, batch_size=7).frames["structured"]
    two = structure_items_rules(items, batch_size=7, workers=2).frames["structured"]
    assert one["id"].to_list() == [str(i) for i in range(1, 40)]
    assert one.equals(two)


# ---------------------------------------------------------------------------- stage / CLI


def test_stage_default_is_rules_and_resumes(tmp_path):
    src = tmp_path / "r.csv"
    pl.DataFrame(
        {
            "id": ["7", "8", "9"],
            "findings": [FINDINGS, "Lungs are clear.", None],
            "impression": [IMPRESSION, None, None],
        }
    ).write_csv(src)
    run = structure_reports(src, tmp_path / "out")
    c = run.result.counts
    assert (c["structured"], c["empty"], c["failed"]) == (2, 1, 0)
    m = read_manifest(tmp_path / "out" / "manifest.json")
    assert m.config["backend"] == "rules" and m.config["rules_version"] == 1
    assert m.config["check"]["version"] == 2
    st = read_shards(tmp_path / "out" / "structured")
    assert st["structured_by"].to_list() == ["rules", "rules"]
    again = structure_reports(src, tmp_path / "out")  # same configuration: resumes
    assert again.result.counts == c


def test_cli_without_model_uses_the_rules(tmp_path):
    src = tmp_path / "r.csv"
    pl.DataFrame({"uid": ["7"], "findings": [FINDINGS], "impression": [IMPRESSION]}).write_csv(src)
    r = runner.invoke(
        app, ["structure-reports", str(src), "--out", str(tmp_path / "o"), "--id-column", "uid"]
    )
    assert r.exit_code == 0, r.output
    assert "(rules)" in r.output and "1 structured" in r.output and "0 failed" in r.output
    r = runner.invoke(
        app,
        [
            "structure-reports",
            str(src),
            "--out",
            str(tmp_path / "o2"),
            "--backend",
            "rules",
            "--model",
            "x.gguf",
        ],
    )
    assert r.exit_code != 0 and "--backend rules takes no --model" in r.output
    r = runner.invoke(app, ["structure-reports", str(src), "--out", str(tmp_path / "o3"), "--plan"])
    assert r.exit_code != 0 and "give --model" in r.output


@pytest.mark.skipif(not EXAMPLE.is_dir(), reason="examples/mimic-mini not generated")
def test_bundled_example_is_structured_with_no_failure(tmp_path):
    """Every report of the bundled example (records and priors) through the default."""
    from cxrctx.mimic import build_priors

    build_priors(EXAMPLE, tmp_path / "records", max_priors=3, workers=1)
    r = runner.invoke(
        app,
        ["structure-reports", str(tmp_path / "records"), "--priors", "--out", str(tmp_path / "st")],
    )
    assert r.exit_code == 0, r.output
    m = read_manifest(tmp_path / "st" / "manifest.json")
    c = m.counts
    assert c["failed"] == 0 and c["structured"] == c["reports"] - c["empty"] > 50
    st = read_shards(tmp_path / "st" / "structured")
    assert st["n_bullets"].min() > 0
    # every bullet of every report sits under an organ it names (or names none)
    for row in st.head(40).iter_rows(named=True):
        for organ in SRRG_ORGANS:
            key = organ.lower().replace(",", "").replace(" ", "_")
            for b in row[key]:
                assert organ in organ_of(b), (organ, b)


@pytest.mark.parametrize("with_model", [False, True])
def test_full_disk_is_one_line_error(tmp_path, monkeypatch, with_model):
    """OSError 28 while writing (here: the manifest) is one line naming the file, exit 2."""
    import errno

    from cxrctx.llm.fake import FakeEngine

    def full(*a, **k):
        raise OSError(
            errno.ENOSPC, "No space left on device", str(tmp_path / "o" / "manifest.json")
        )

    src = tmp_path / "r.csv"
    pl.DataFrame({"id": ["7"], "findings": [FINDINGS], "impression": [IMPRESSION]}).write_csv(src)
    monkeypatch.setattr("cxrctx.structure.run.write_stage_manifest", full)
    monkeypatch.setattr("cxrctx.structure.run.make_engine", lambda spec: FakeEngine("m"))
    extra = ["--model", "m.gguf"] if with_model else []
    r = runner.invoke(app, ["structure-reports", str(src), "--out", str(tmp_path / "o"), *extra])
    assert r.exit_code == 2, r.output
    assert "manifest.json: cannot write (No space left on device)" in r.output
    assert "Traceback" not in r.output and isinstance(r.exception, SystemExit)
