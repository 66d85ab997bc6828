import json
import os

import polars as pl
import pytest

from cxrctx.io import (
    atomic_path,
    read_manifest,
    read_shards,
    sha256_file,
    write_manifest,
    write_parquet,
    write_shards,
)
from cxrctx.models import Manifest


def _frame(n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": list(range(n)),
            "text": [f"row {i}" for i in range(n)],
            "tags": [[f"t{i % 3}"] for i in range(n)],
        }
    )


def test_write_shards_splits_and_is_deterministic(tmp_path):
    df = _frame(25)
    a = write_shards(df, tmp_path / "a", rows_per_shard=10)
    b = write_shards(df, tmp_path / "b", rows_per_shard=10)
    assert [s.rows for s in a] == [10, 10, 5]
    assert [s.path for s in a] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [s.sha256 for s in a] == [s.sha256 for s in b]
    assert read_shards(tmp_path / "a").equals(df)


def test_write_shards_removes_stale_and_keeps_schema_when_empty(tmp_path):
    write_shards(_frame(25), tmp_path, rows_per_shard=10)
    infos = write_shards(_frame(0), tmp_path, rows_per_shard=10)
    assert len(infos) == 1 and infos[0].rows == 0
    assert sorted(p.name for p in tmp_path.glob("part-*.parquet")) == ["part-00000.parquet"]
    assert read_shards(tmp_path).columns == ["id", "text", "tags"]


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.parquet"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert not target.exists()
    assert os.listdir(tmp_path) == []


def test_write_parquet_sha_matches_file(tmp_path):
    info = write_parquet(_frame(3), tmp_path / "t.parquet")
    assert info.sha256 == sha256_file(tmp_path / "t.parquet")
    assert info.rows == 3


def test_manifest_roundtrip(tmp_path):
    m = Manifest(tool_version="1", stage="x", schema_version=1, config={"k": 1}, counts={"n": 2})
    write_manifest(m, tmp_path / "manifest.json")
    assert read_manifest(tmp_path / "manifest.json") == m
    assert json.loads((tmp_path / "manifest.json").read_text())["stage"] == "x"
