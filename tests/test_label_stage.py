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
