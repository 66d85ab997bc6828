"""Atomic, deterministic Parquet shards and manifests, used by every stage.

Same frame in ⇒ same bytes out: fixed compression, no pandas metadata, no
timestamps. Every file is written to a temporary name in the same directory and
renamed into place, so a killed run never leaves a half-written shard.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from cxrctx.models import InputFile, Manifest, ShardInfo

SHARD_PATTERN = "part-{:05d}.parquet"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def input_file(path: str | os.PathLike, name: str | None = None) -> InputFile:
    p = Path(path)
    return InputFile(path=name or str(p), size=p.stat().st_size, sha256=sha256_file(p))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _to_arrow(df: pl.DataFrame | pa.Table) -> pa.Table:
    table = df.to_arrow() if isinstance(df, pl.DataFrame) else df
    # polars may emit large_string/large_list or string_view; keep as is, but drop
    # schema metadata so bytes do not depend on who built the frame.
    return table.replace_schema_metadata(None)


def write_parquet(df: pl.DataFrame | pa.Table, path: str | os.PathLike) -> ShardInfo:
    """Write one Parquet file atomically and deterministically; return its ShardInfo (path absolute)."""
    table = _to_arrow(df)
    with atomic_path(path) as tmp:
        pq.write_table(
            table,
            tmp,
            compression="zstd",
            compression_level=3,
            use_dictionary=True,
            write_statistics=True,
            store_schema=True,
        )
    return ShardInfo(path=str(path), rows=table.num_rows, sha256=sha256_file(path))


def write_shards(
    df: pl.DataFrame,
    out_dir: str | os.PathLike,
    rows_per_shard: int,
    relative_to: str | os.PathLike | None = None,
) -> list[ShardInfo]:
    """Split `df` into `part-NNNNN.parquet` files of at most `rows_per_shard` rows.

    Stale shards from an earlier, larger run are removed so the directory holds
    exactly what the manifest lists. An empty frame still yields one (empty) shard,
    so readers always find the schema.
    """
    if rows_per_shard < 1:
        raise ValueError("rows_per_shard must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = Path(relative_to) if relative_to is not None else out
    infos: list[ShardInfo] = []
    n = max(1, -(-df.height // rows_per_shard))
    for i in range(n):
        part = df.slice(i * rows_per_shard, rows_per_shard)
        path = out / SHARD_PATTERN.format(i)
        info = write_parquet(part, path)
        infos.append(info.model_copy(update={"path": os.path.relpath(path, base)}))
    keep = {SHARD_PATTERN.format(i) for i in range(n)}
    for stale in out.glob("part-*.parquet"):
        if stale.name not in keep:
            stale.unlink()
    return infos


def shard_paths(path: str | os.PathLike) -> list[Path]:
    """Parquet files of a shard directory (sorted), or the file itself."""
    p = Path(path)
    if p.is_file():
        return [p]
    return sorted(p.glob("part-*.parquet"))


def read_shards(path: str | os.PathLike) -> pl.DataFrame:
    files = shard_paths(path)
    if not files:
        raise FileNotFoundError(f"no part-*.parquet shards in {path}")
    return pl.concat([pl.read_parquet(f) for f in files], how="vertical_relaxed")


def write_manifest(manifest: Manifest, path: str | os.PathLike) -> None:
    data = manifest.model_dump(mode="json")
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_manifest(path: str | os.PathLike) -> Manifest:
    return Manifest.model_validate_json(Path(path).read_text(encoding="utf-8"))
