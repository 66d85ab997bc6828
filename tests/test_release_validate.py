"""`validate` catches each corruption of a stage folder or release; the CLI of the release commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from cxrctx.cli import app
from cxrctx.io import read_manifest, sha256_file, write_parquet
from cxrctx.release import validate

runner = CliRunner()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """build-priors + rules labels of a small synthetic root, and their release."""
    from cxrctx.labeling import label_lesions
    from cxrctx.mimic.build import build_priors
    from cxrctx.synth import synthesize

    base = tmp_path_factory.mktemp("validate")
    synthesize(base / "mimic", patients=12, seed=2)
    build_priors(base / "mimic", base / "records", workers=1)
    label_lesions(base / "records", base / "labels", labeler="rules")
    res = runner.invoke(
        app,
        [
            "release",
            "--records",
            str(base / "records"),
            "--labels",
            str(base / "labels"),
            "--out",
            str(base / "rel"),
            "--name",
            "demo/ctx",
            "--version",
            "1.0.0",
            "--format",
            "srrg",
        ],
    )
    assert res.exit_code == 0, res.output
    return base


@pytest.fixture
def rel(built, tmp_path) -> Path:
    out = tmp_path / "rel"
    shutil.copytree(built / "rel", out)
    return out


def _file(bundle: Path, table: str, split: str = "train") -> Path:
    return next((bundle / "data" / table).glob(f"{split}-*.parquet"))


def _rewrite(bundle: Path, f: Path, df: pl.DataFrame) -> None:
    """Replace a data file AND its manifest entry, so only the deeper checks can object."""
    info = write_parquet(df, f)
    mpath = bundle / "manifest.json"
    m = json.loads(mpath.read_text())
    rel = f.relative_to(bundle).as_posix()
    for s in m["shards"]:
        if s["path"] == rel:
            s.update(rows=info.rows, sha256=info.sha256)
    mpath.write_text(json.dumps(m, indent=2))


def test_a_fresh_release_and_its_stages_are_valid(built):
    for p in ("rel", "rel/public", "rel/credentialed", "records"):
        rep = validate(built / p)
        assert rep.ok, (p, rep.problems)
    assert validate(built / "labels", records=built / "records").ok
    res = runner.invoke(app, ["validate", str(built / "rel")])
    assert res.exit_code == 0 and "valid:" in res.output


def test_changed_shard_is_caught_by_sha256(rel):
    f = _file(rel / "public", "studies")
    df = pl.read_parquet(f).with_columns(pl.col("n_images") + 1)
    write_parquet(df, f)  # same rows, manifest not updated
    rep = validate(rel)
    assert any(p.startswith(str(f)) and "sha256 differs" in p for p in rep.problems), rep.problems
    res = runner.invoke(app, ["validate", str(rel)])
    assert res.exit_code == 1 and "sha256 differs" in res.output and "problem(s)" in res.output


def test_truncated_shard_is_caught(rel):
    f = _file(rel / "credentialed", "records")
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    rep = validate(rel / "credentialed")
    assert rep.problems == [f"{f}: unreadable, truncated or corrupt (ArrowInvalid)"]


def test_labels_for_ids_that_are_not_records_are_caught(rel):
    f = _file(rel / "public", "labels_long")
    df = pl.read_parquet(f)
    first = df["id"][0]
    df = df.with_columns(
        pl.when(pl.col("id") == first).then(pl.lit("59999999")).otherwise(pl.col("id")).alias("id"),
        pl.when(pl.col("id") == first)
        .then(pl.lit(59999999, pl.Int64))
        .otherwise(pl.col("study_id"))
        .alias("study_id"),
    )
    _rewrite(rel / "public", f, df)
    rep = validate(rel / "public")
    assert any(
        "labels for 1 id(s) that are not records (e.g. 59999999)" in p for p in rep.problems
    ), rep.problems


def test_label_folder_against_records_catches_orphans(built, tmp_path):
    lab = tmp_path / "labels"
    shutil.copytree(built / "labels", lab)
    f = lab / "labels" / "part-00000.parquet"
    df = pl.read_parquet(f)
    df = df.with_columns(
        pl.when(pl.col("id") == df["id"][0])
        .then(pl.lit("58888888"))
        .otherwise(pl.col("id"))
        .alias("id")
    )
    info = write_parquet(df, f)
    m = json.loads((lab / "manifest.json").read_text())
    m["shards"][0].update(sha256=info.sha256)
    (lab / "manifest.json").write_text(json.dumps(m))
    rep = validate(lab, records=built / "records")
    assert any("not records (e.g. 58888888)" in p for p in rep.problems), rep.problems


def test_split_crossing_a_patient_is_caught(rel):
    f = _file(rel / "credentialed", "records")
    df = pl.read_parquet(f)
    subject = df.filter(pl.col("subject_id").is_duplicated())["subject_id"][0]
    sid = df.filter(pl.col("subject_id") == subject)["study_id"][0]
    df = df.with_columns(
        pl.when(pl.col("study_id") == sid)
        .then(pl.lit("test"))
        .otherwise(pl.col("split"))
        .alias("split")
    )
    _rewrite(rel / "credentialed", f, df)
    rep = validate(rel / "credentialed")
    assert any(f"split crosses patient(s) {subject}" in p for p in rep.problems), rep.problems


def test_prior_not_strictly_earlier_is_caught(rel):
    f = _file(rel / "credentialed", "records")
    df = pl.read_parquet(f)
    sid = df.filter(pl.col("priors").list.len() > 0)["study_id"][0]
    later = df.with_columns(
        pl.when(pl.col("study_id") == sid)
        .then(
            pl.col("priors").list.eval(
                pl.element().struct.with_fields(pl.lit(-1, pl.Int64).alias("days_before"))
            )
        )
        .otherwise(pl.col("priors"))
        .alias("priors")
    )
    _rewrite(rel / "credentialed", f, later)
    rep = validate(rel / "credentialed")
    assert any(
        f"not strictly earlier than their study (e.g. study {sid}" in p for p in rep.problems
    ), rep.problems


def test_free_text_column_in_public_bundle_is_caught(rel, built):
    f = _file(rel / "public", "studies")
    rec = pl.read_parquet(_file(rel / "credentialed", "records")).select("study_id", "findings")
    df = pl.read_parquet(f).join(rec, on="study_id", how="left", maintain_order="left")
    _rewrite(rel / "public", f, df)
    rep = validate(rel / "public")
    assert any("column 'findings' is not allowed in a public bundle" in p for p in rep.problems), (
        rep.problems
    )


def test_missing_schema_column_is_caught(rel):
    f = _file(rel / "credentialed", "records")
    _rewrite(rel / "credentialed", f, pl.read_parquet(f).drop("report_sha256"))
    rep = validate(rel / "credentialed")
    assert any(
        "column 'report_sha256' required by record.schema.json is missing" in p
        for p in rep.problems
    )


def test_card_without_a_split_config_is_caught(rel):
    card = rel / "public" / "README.md"
    text = card.read_text().replace("  - split: test\n    path: data/studies/test-*.parquet\n", "")
    card.write_text(text)
    m = json.loads((rel / "public" / "manifest.json").read_text())
    for e in m["files"]:
        if e["path"] == "README.md":
            e.update(sha256=sha256_file(card), size=card.stat().st_size)
    (rel / "public" / "manifest.json").write_text(json.dumps(m))
    rep = validate(rel / "public")
    assert any(
        "data/studies/test-" in p and "not in any config of README.md" in p for p in rep.problems
    ), rep.problems


def test_unfinished_or_foreign_folder_is_a_problem(tmp_path):
    (tmp_path / "records").mkdir()
    rep = validate(tmp_path)
    assert not rep.ok and "no manifest.json" in rep.problems[0]


def test_cli_release_refuses_wrong_stage_and_non_empty_out(built, tmp_path):
    res = runner.invoke(
        app,
        [
            "release",
            "--records",
            str(built / "labels"),
            "--out",
            str(tmp_path / "r"),
            "--name",
            "x",
            "--version",
            "1.0.0",
        ],
    )
    assert res.exit_code == 2 and "a label-lesions output; expected build-priors" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(
        app,
        [
            "release",
            "--records",
            str(built / "records"),
            "--out",
            str(built / "rel"),
            "--name",
            "x",
            "--version",
            "9.0.0",
        ],
    )
    assert res.exit_code == 2 and "not empty" in res.output and "--overwrite" in res.output


def test_cli_info_json_and_rebuild_errors(built, tmp_path):
    res = runner.invoke(app, ["info", str(built / "rel"), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["stage"] == "release-public" and data["splits"]["all"]["studies"] > 0
    res = runner.invoke(
        app,
        [
            "rebuild",
            str(built / "rel" / "public"),
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert res.exit_code == 2 and "MIMIC root not found" in res.output


def test_build_rois_reads_records_through_the_stage_reader(built, tmp_path):
    from cxrctx.errors import CxrctxError
    from cxrctx.imagenome import build_rois

    sg = tmp_path / "sg" / "silver_dataset" / "scene_graph"
    sg.mkdir(parents=True)
    (sg / "x_SceneGraph.json").write_text("{}")
    rec = tmp_path / "records"
    shutil.copytree(built / "records", rec)
    (rec / "manifest.json").unlink()
    with pytest.raises(CxrctxError, match=r"no manifest.json \(an interrupted or unfinished run\)"):
        build_rois(tmp_path / "sg", records=rec, out=tmp_path / "rois")
    with pytest.raises(CxrctxError, match="a label-lesions output; expected build-priors"):
        build_rois(tmp_path / "sg", records=built / "labels", out=tmp_path / "rois")
    with pytest.raises(
        CxrctxError, match="not empty: holds a label-lesions output; pass --overwrite"
    ):
        build_rois(tmp_path / "sg", records=built / "records", out=built / "labels")
    res = build_rois(tmp_path / "sg", records=built / "records", out=tmp_path / "rois")
    assert res.counts["images_considered"] == res.rows + res.rejects


def test_a_rules_labelled_release_rebuilds_byte_for_byte_without_a_model(built, tmp_path):
    from cxrctx.release import rebuild

    rep = rebuild(built / "rel", built / "mimic", out=tmp_path / "rb")
    assert rep.compared > 0 and rep.identical, (rep.differences[:3], rep.skipped)
    labels = read_manifest(tmp_path / "rb" / "label-lesions" / "manifest.json")
    assert labels.config["backend"] == "rules" and labels.config["model"] is None
