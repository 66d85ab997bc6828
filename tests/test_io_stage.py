"""The stage reader (`open_stage`), the output policy (`prepare_output`) and file modes."""

from __future__ import annotations

import os
import socket
import time

import polars as pl
import pytest

from cxrctx.errors import CxrctxError
from cxrctx.io import (
    atomic_path,
    check_shard_slot,
    config_hash,
    open_stage,
    shard_name,
    write_manifest,
    write_parquet,
    write_shards,
    write_stage_manifest,
)
from cxrctx.models import Manifest
from cxrctx.output_policy import RUN_MARKER, prepare_output, remove_stale_tmp


def _stage(tmp_path, name="build-priors", rows=25, folder="records", stage_dir="st"):
    out = tmp_path / stage_dir
    df = pl.DataFrame({"study_id": list(range(rows)), "x": [f"r{i}" for i in range(rows)]})
    shards = write_shards(df, out / folder, rows_per_shard=10, relative_to=out)
    write_stage_manifest(out, stage=name, schema_version=1, config={"k": 1}, shards=shards)
    return out


# ------------------------------------------------------------------ file modes


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_respect_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_parquet(pl.DataFrame({"a": [1]}), tmp_path / "t.parquet")
        write_manifest(
            Manifest(tool_version="0", stage="s", schema_version=1, config={}), tmp_path / "m.json"
        )
    finally:
        os.umask(old)
    for name in ("t.parquet", "m.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


def test_temp_names_carry_host_and_pid(tmp_path):
    with atomic_path(tmp_path / "f.bin") as tmp:
        assert f"~{os.getpid()}~" in tmp.name and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"x")
    assert (tmp_path / "f.bin").read_bytes() == b"x"


def test_shard_names_of_sharded_runs_never_collide():
    assert shard_name(0) == "part-00000.parquet"
    assert shard_name(0, 2) == "part-00000-of-00002.parquet"
    assert shard_name(0, 2) != shard_name(0, 4)


# ------------------------------------------------------------------ open_stage


def test_open_stage_resolves_folder_table_folder_and_manifest(tmp_path):
    out = _stage(tmp_path)
    for p in (out, out / "records", out / "manifest.json"):
        st = open_stage(p, "build-priors")
        assert st.dir == out and st.name == "build-priors"
        assert st.read().height == 25


def test_open_stage_refuses_another_stage(tmp_path):
    out = _stage(tmp_path, name="label-lesions", folder="labels")
    with pytest.raises(
        CxrctxError, match=r"manifest.json: a label-lesions output; expected build-priors"
    ):
        open_stage(out, "build-priors")


def test_open_stage_refuses_an_interrupted_run(tmp_path):
    out = _stage(tmp_path)
    (out / "manifest.json").unlink()
    with pytest.raises(CxrctxError, match=r"no manifest.json .an interrupted or unfinished run"):
        open_stage(out)


def test_open_stage_refuses_changed_truncated_missing_and_unlisted_shards(tmp_path):
    out = _stage(tmp_path)
    f = out / "records" / "part-00001.parquet"
    # same row count, other bytes
    write_parquet(pl.DataFrame({"study_id": list(range(10)), "x": ["changed"] * 10}), f)
    with pytest.raises(CxrctxError, match=r"part-00001.parquet: sha256 differs from manifest.json"):
        open_stage(out)
    out = _stage(tmp_path, stage_dir="b")
    f = out / "records" / "part-00001.parquet"
    f.write_bytes(f.read_bytes()[:-20])
    with pytest.raises(CxrctxError, match=r"part-00001.parquet: unreadable, truncated or corrupt"):
        open_stage(out)
    out = _stage(tmp_path, stage_dir="c")
    (out / "records" / "part-00002.parquet").unlink()
    with pytest.raises(
        CxrctxError, match=r"part-00002.parquet: listed in manifest.json but missing"
    ):
        open_stage(out)
    out = _stage(tmp_path, stage_dir="d")
    write_parquet(pl.DataFrame({"study_id": [1]}), out / "records" / "part-00009.parquet")
    with pytest.raises(CxrctxError, match=r"part-00009.parquet: not listed in manifest.json"):
        open_stage(out)


def test_open_stage_refuses_a_newer_schema_version(tmp_path):
    out = tmp_path / "st"
    write_stage_manifest(out, stage="build-priors", schema_version=99, config={})
    with pytest.raises(CxrctxError, match="schema version 99 is newer"):
        open_stage(out)


def _slice(out, i, n, rows=4):
    df = pl.DataFrame({"id": [f"{i}-{k}" for k in range(rows)]})
    info = write_parquet(df, out / "labels" / shard_name(i, n))
    m = Manifest(
        tool_version="0",
        stage="label-lesions",
        schema_version=1,
        config={"shard": f"{i}/{n}"},
        shards=[info.model_copy(update={"path": f"labels/{shard_name(i, n)}"})],
        counts={"documents": rows},
    )
    write_manifest(m, out / f"manifest-shard-{i:05d}-of-{n:05d}.json")


def test_sharded_runs_merge_only_when_complete_and_not_mixed(tmp_path):
    out = tmp_path / "lab"
    _slice(out, 0, 2)
    with pytest.raises(
        CxrctxError,
        match=r"incomplete sharded run: 1 of 2 slices have a manifest .missing --shard 1/2",
    ):
        open_stage(out, "label-lesions")
    _slice(out, 1, 2)
    st = open_stage(out, "label-lesions")
    assert st.read().height == 8 and st.manifest.counts["documents"] == 8
    assert "shard" not in st.manifest.config
    _slice(out, 0, 4)
    with pytest.raises(CxrctxError, match=r"mixed shardings in one folder .slices of 2 and 4"):
        open_stage(out, "label-lesions")


# ------------------------------------------------------------------ prepare_output


def test_prepare_output_fresh_resume_refuse_overwrite(tmp_path):
    out = tmp_path / "o"
    a, b = config_hash({"k": 1}), config_hash({"k": 2})
    r = prepare_output(out, stage="label-lesions", config_hash=a)
    assert not r.resumed and (out / RUN_MARKER).is_file()
    (out / "labels").mkdir()
    (out / "labels" / "part-00000.parquet").write_bytes(b"x")
    assert prepare_output(out, stage="label-lesions", config_hash=a).resumed
    with pytest.raises(
        CxrctxError, match=r"another label-lesions run .different configuration.; pass --overwrite"
    ):
        prepare_output(out, stage="label-lesions", config_hash=b)
    with pytest.raises(CxrctxError, match="holds a label-lesions output"):
        prepare_output(out, stage="build-priors", config_hash=a)
    r = prepare_output(out, stage="label-lesions", config_hash=b, overwrite=True)
    assert r.replaced and not (out / "labels").exists()


def test_prepare_output_recognises_a_finished_stage_without_marker(tmp_path):
    out = _stage(tmp_path)
    same = config_hash({"k": 1})
    assert prepare_output(out, stage="build-priors", config_hash=same).resumed
    with pytest.raises(CxrctxError, match="not empty"):
        prepare_output(out, stage="build-priors", config_hash=config_hash({"k": 3}))


def test_prepare_output_never_empties_a_foreign_folder(tmp_path):
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(CxrctxError, match="not a cxrctx output"):
        prepare_output(out, stage="release", config_hash="x", overwrite=True)
    assert (out / "thesis.tex").read_text() == "precious"


def test_prepare_output_checks_writability_first(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(CxrctxError, match="exists and is not a directory"):
        prepare_output(f, stage="s", config_hash="x")
    with pytest.raises(CxrctxError, match="cannot create the output folder"):
        prepare_output(f / "sub", stage="s", config_hash="x")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            with pytest.raises(CxrctxError, match="not writable"):
                prepare_output(ro, stage="s", config_hash="x")
        finally:
            ro.chmod(0o755)


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    host = socket.gethostname()
    (tmp_path / "labels").mkdir()
    dead = tmp_path / "labels" / f".part-00000.parquet~{host}~999999~abc.tmp"
    live = tmp_path / "labels" / f".part-00001.parquet~{host}~{os.getpid()}~abc.tmp"
    other_old = tmp_path / ".manifest.json~elsewhere~12~abc.tmp"
    other_new = tmp_path / ".cache.json~elsewhere~12~abc.tmp"
    for p in (dead, live, other_old, other_new):
        p.write_bytes(b"half")
    old = time.time() - 7200
    os.utime(other_old, (old, old))
    assert remove_stale_tmp(tmp_path) == 2
    assert not dead.exists() and not other_old.exists()
    assert live.exists() and other_new.exists()


def test_resuming_a_killed_run_removes_its_temp_parts(tmp_path):
    out = tmp_path / "o"
    prepare_output(out, stage="s", config_hash="h")
    killed = out / "labels" / f".part-00000.parquet~{socket.gethostname()}~999999~x.tmp"
    killed.parent.mkdir()
    killed.write_bytes(b"half")
    res = prepare_output(out, stage="s", config_hash="h")
    assert res.resumed and res.stale_tmp_removed == 1 and not killed.exists()


def test_a_slice_cannot_join_a_folder_of_another_sharding(tmp_path):
    out = tmp_path / "lab"
    check_shard_slot(out, (0, 2))  # a new folder is fine
    _slice(out, 0, 2)
    check_shard_slot(out, (1, 2))
    with pytest.raises(CxrctxError, match=r"holds slices of 2; --shard 0/4 would mix shardings"):
        check_shard_slot(out, (0, 4))
    with pytest.raises(CxrctxError, match="a whole-input run needs another --out"):
        check_shard_slot(out, None)
    whole = _stage(tmp_path, name="label-lesions", folder="labels")
    with pytest.raises(
        CxrctxError, match="holds a whole-input run; --shard 0/2 needs another --out"
    ):
        check_shard_slot(whole, (0, 2))
