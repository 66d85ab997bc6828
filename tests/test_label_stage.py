"""label-lesions as a stage: it reads only finished build-priors folders, follows the shared
output policy (`--overwrite`) and keeps the slices of one sharding apart from others."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxrctx.cli import app
from cxrctx.io import open_stage, read_manifest

runner = CliRunner()


@pytest.fixture(scope="module")
def priors(tmp_path_factory) -> Path:
    from cxrctx.mimic.build import build_priors
    from cxrctx.synth import synthesize

    base = tmp_path_factory.mktemp("labelstage")
    synthesize(base / "mimic", patients=6, seed=3)
    build_priors(base / "mimic", base / "records", workers=1)
    return base / "records"


def _label(*args: str):
    return runner.invoke(app, ["label-lesions", *args])


def test_an_interrupted_build_priors_folder_is_refused_in_one_line(priors, tmp_path):
    broken = tmp_path / "records"
    shutil.copytree(priors, broken)
    (broken / "manifest.json").unlink()
    r = _label(str(broken), "--out", str(tmp_path / "labels"))
    assert r.exit_code != 0
    assert "no manifest.json (an interrupted or unfinished run)" in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "labels").exists()


def test_an_altered_records_shard_is_refused(priors, tmp_path):
    changed = tmp_path / "records"
    shutil.copytree(priors, changed)
    shard = sorted((changed / "records").glob("part-*.parquet"))[0]
    shard.write_bytes(shard.read_bytes() + b"\0")
    r = _label(str(changed), "--out", str(tmp_path / "labels"))
    assert r.exit_code != 0 and shard.name in r.output


def test_inputs_are_recorded_with_their_sha256(priors, tmp_path):
    r = _label(str(priors), "--out", str(tmp_path / "labels"))
    assert r.exit_code == 0, r.output
    m = read_manifest(tmp_path / "labels" / "manifest.json")
    want = {s.path: s.sha256 for s in open_stage(priors, "build-priors").manifest.shards}
    assert {i.path: i.sha256 for i in m.inputs} == want


def test_another_config_into_the_same_out_needs_overwrite(priors, tmp_path):
    out = str(tmp_path / "labels")
    assert _label(str(priors), "--out", out).exit_code == 0
    again = _label(str(priors), "--out", out)  # same configuration: resumes
    assert again.exit_code == 0, again.output
    other = _label(str(priors), "--out", out, "--sections", "findings")
    assert other.exit_code != 0
    assert "another label-lesions run" in other.output and "--overwrite" in other.output
    assert read_manifest(Path(out) / "manifest.json").config["sections"] == [
        "findings",
        "impression",
    ]
    done = _label(str(priors), "--out", out, "--sections", "findings", "--overwrite")
    assert done.exit_code == 0, done.output
    assert read_manifest(Path(out) / "manifest.json").config["sections"] == ["findings"]


def test_slices_are_named_i_of_n_and_shardings_do_not_mix(priors, tmp_path):
    out = tmp_path / "labels"
    for i in range(2):
        r = _label(str(priors), "--out", str(out), "--shard", f"{i}/2")
        assert r.exit_code == 0, r.output
    names = sorted(p.name for p in (out / "labels").glob("part-*.parquet"))
    assert names == ["part-00000-of-00002.parquet", "part-00001-of-00002.parquet"]
    assert open_stage(out, "label-lesions").manifest.extra["sharded"] == 2
    r = _label(str(priors), "--out", str(out), "--shard", "0/4")
    assert r.exit_code != 0 and "would mix shardings" in r.output
    whole = _label(str(priors), "--out", str(out))
    assert whole.exit_code != 0 and "slices of a --shard run" in whole.output
    assert not (out / "labels" / "part-00000-of-00004.parquet").exists()


def test_one_front_door_picks_the_labeler_and_validates_its_config_first(tmp_path):
    """label_lesions: the rules without an engine, llm with one; a labeler that needs an
    engine, an engine given to the rules, or an invalid option fail before any input is read."""
    from pydantic import ValidationError

    from cxrctx.errors import CxrctxError
    from cxrctx.labeling import Labeler, LabelLesionsConfig, label_lesions
    from cxrctx.llm.fake import FakeEngine

    src = tmp_path / "docs.csv"
    src.write_text("id,text\na,Small left pleural effusion.\nb,No pneumothorax.\n")
    rules = label_lesions(src, tmp_path / "rules")
    assert rules.manifest is not None and rules.manifest.config["backend"] == "rules"
    llm = label_lesions(src, tmp_path / "llm", engine=FakeEngine(), limit=1)
    assert llm.manifest is not None and llm.manifest.config["mode"] == Labeler.llm.value
    assert llm.manifest.counts["documents"] == 1
    missing = tmp_path / "missing.csv"  # never read: each error comes first
    with pytest.raises(CxrctxError, match="the cot labeler needs an engine"):
        label_lesions(missing, tmp_path / "x", labeler="cot")
    with pytest.raises(CxrctxError, match="the rules labeler takes no engine"):
        label_lesions(missing, tmp_path / "x", labeler=Labeler.rules, engine=FakeEngine())
    with pytest.raises(ValidationError, match="limit"):
        label_lesions(missing, tmp_path / "x", limit=0)
    with pytest.raises(TypeError, match="not both"):
        label_lesions(missing, tmp_path / "x", config=LabelLesionsConfig(), limit=2)
    assert not (tmp_path / "x").exists()
