"""Atomic, deterministic Parquet shards and manifests, used by every stage.

Same frame in ⇒ same bytes out: fixed compression, no pandas metadata, no
timestamps. Every file is written to a temporary name in the same directory and
renamed into place, so a killed run never leaves a half-written shard. Files get the
usual umask-respecting mode (0644 under umask 022), not the 0600 of a temp file.

The read side: `open_stage` resolves a stage folder and checks its manifest (stage, schema
version, every file's sha256 and row count, completeness of sharded runs) before a
consumer reads a byte. The write side's policy (`cxrctx.output_policy.prepare_output`:
overwrite / resume, writability, the temp files a killed run left) builds on this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from cxrctx import __version__, jsonl
from cxrctx.errors import CxrctxError
from cxrctx.models import InputFile, Manifest, ShardInfo

#: A polars dtype as schemas here spell it: a class (pl.Int64) or an instance (pl.List(...)).
PolarsType = Any

SHARD_PATTERN = "part-{:05d}.parquet"
#: Name of part i of a run split into n slices (`--shard i/n`): slices of different
#: shardings never collide, and a reader can tell them apart.
SHARDED_PATTERN = "part-{:05d}-of-{:05d}.parquet"
#: Temp files of `atomic_path` are `.<name>~<host>~<pid>~<random>.tmp`, so a later run can
#: tell a dead writer's leftovers from a live one's.
TMP_SUFFIX = ".tmp"
_UMASK_LOCK = threading.Lock()


def shard_name(i: int, n: int | None = None) -> str:
    """`part-00002.parquet`, or `part-00002-of-00004.parquet` for slice 2 of a 4-way run."""
    return SHARD_PATTERN.format(i) if n is None else SHARDED_PATTERN.format(i, n)


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        old = os.umask(0o022)
        os.umask(old)
    return old


def file_mode() -> int:
    """Mode of a new regular file under the current umask (what `open()` would give)."""
    return 0o666 & ~current_umask()


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
    owner = f"{host_name()}~{os.getpid()}~"
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}~{owner}", suffix=TMP_SUFFIX, dir=final.parent)
    try:
        os.fchmod(fd, file_mode())
    finally:
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


def host_name() -> str:
    """This host's name as temp-file names carry it (who owns a temp file)."""
    return socket.gethostname().replace("~", "-") or "host"


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
    sink = pa.BufferOutputStream()  # in memory: hashed there, not read back from disk
    pq.write_table(
        table,
        sink,
        compression="zstd",
        compression_level=3,
        use_dictionary=True,
        write_statistics=True,
        store_schema=True,
    )
    data = memoryview(sink.getvalue())
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return ShardInfo(path=str(path), rows=table.num_rows, sha256=hashlib.sha256(data).hexdigest())


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
    n = max(1, -(-df.height // rows_per_shard))
    # One conversion to Arrow, then zero-copy slices (converting each polars slice on its
    # own re-walks the shared string buffers: several times slower at full MIMIC scale).
    table = _to_arrow(df)

    def write(i: int) -> ShardInfo:
        path = out / SHARD_PATTERN.format(i)
        info = write_parquet(table.slice(i * rows_per_shard, rows_per_shard), path)
        return info.model_copy(update={"path": os.path.relpath(path, base)})

    # pyarrow's writer releases the GIL: one thread per core, same bytes, order kept.
    with ThreadPoolExecutor(min(n, os.cpu_count() or 1)) as pool:
        infos = list(pool.map(write, range(n)))
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


def config_hash(config: Any) -> str:
    """sha256 of a config (pydantic model or JSON-able dict) as canonical JSON.

    Two runs with the same hash are the same run: `prepare_output` resumes one and refuses
    to mix another into its folder."""
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return sha256_bytes(text.encode("utf-8"))


def file_entry(path: str | os.PathLike, relative_to: str | os.PathLike) -> InputFile:
    """An output file that is not a table (checkpoint, report JSON) for `Manifest.files`."""
    p = Path(path)
    return input_file(p, os.path.relpath(p, relative_to))


def write_stage_manifest(
    out: str | os.PathLike,
    *,
    stage: str,
    schema_version: int,
    config: Any,
    inputs: list[InputFile] | None = None,
    shards: list[ShardInfo] | None = None,
    tables: list[ShardInfo] | None = None,
    files: list[InputFile] | None = None,
    counts: dict[str, int] | None = None,
    extra: dict[str, Any] | None = None,
    name: str = "manifest.json",
) -> Manifest:
    """Write `OUT/manifest.json` for a stage (last, after its outputs) and return it; every
    stage writes its manifest through this one function. A `--shard i/n` slice names its
    own (`manifest-shard-0000i-of-0000n.json`).

    For stages whose outputs are not only Parquet tables (train: checkpoints; evaluate: a
    report JSON): list those in `files` so `open_stage` checks their sha256 too."""
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    manifest = Manifest(
        tool_version=__version__,
        stage=stage,
        schema_version=schema_version,
        config=dict(config),
        inputs=list(inputs or []),
        shards=list(shards or []),
        tables=list(tables or []),
        files=list(files or []),
        counts=dict(counts or {}),
        extra=dict(extra or {}),
    )
    write_manifest(manifest, Path(out) / name)
    return manifest


# ------------------------------------------------------------------ the stage reader

MANIFEST_NAME = "manifest.json"
_SHARD_MANIFEST_RE = re.compile(r"^manifest-shard-(\d+)-of-(\d+)\.json$")
#: Newest schema version this cxrctx reads, per stage; a newer output is refused.
SCHEMA_VERSIONS: dict[str, int] = {
    "build-priors": 1,
    "label-lesions": 1,
    "build-rois": 1,
    "train": 1,
    "generate": 1,
    "evaluate": 1,
    "release-public": 1,
    "release-credentialed": 1,
    "structure-reports": 1,
}


@dataclass
class Stage:
    """A checked stage output folder: where it is and what its manifest says."""

    dir: Path
    manifest: Manifest
    manifest_paths: list[Path] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.manifest.stage

    def shard_files(self) -> list[Path]:
        """The main table's files, in manifest order."""
        return [self.dir / s.path for s in self.manifest.shards]

    def read(self) -> pl.DataFrame:
        """The main table (every shard the manifest lists, nothing else)."""
        files = self.shard_files()
        if not files:
            raise CxrctxError(f"{self.dir}: the {self.name} manifest lists no shards")
        return pl.concat([pl.read_parquet(f) for f in files], how="vertical_relaxed")

    def table_path(self, stem: str) -> Path | None:
        """A side table (`rejects`, `failures`, ...) by its name, or None."""
        for t in self.manifest.tables:
            if Path(t.path).stem == stem or Path(t.path).parts[0] == stem:
                return self.dir / t.path
        return None

    def read_table(self, stem: str) -> pl.DataFrame:
        files = [
            self.dir / t.path
            for t in self.manifest.tables
            if Path(t.path).stem == stem or Path(t.path).parts[0] == stem
        ]
        if not files:
            raise CxrctxError(f"{self.dir}: the {self.name} manifest lists no {stem} table")
        return pl.concat([pl.read_parquet(f) for f in files], how="vertical_relaxed")


def _read_manifest_checked(path: Path) -> Manifest:
    try:
        return read_manifest(path)
    except (OSError, UnicodeDecodeError) as e:
        raise CxrctxError(f"{path}: cannot read the manifest ({e})") from e
    except ValueError as e:
        first = str(e).splitlines()[0][:160]
        raise CxrctxError(f"{path}: not a valid cxrctx manifest ({first})") from e


def _resolve_stage_dir(path: str | os.PathLike) -> Path:
    """The stage folder for `path`: the folder itself, its manifest, or a table folder in it."""
    p = Path(path)
    if not p.exists():
        raise CxrctxError(f"{p}: no such file or directory")
    if p.is_file():
        if p.name == MANIFEST_NAME or _SHARD_MANIFEST_RE.match(p.name):
            return p.parent
        if p.suffix == ".parquet":
            for up in (p.parent, p.parent.parent):
                if has_manifest(up):
                    return up
        raise CxrctxError(f"{p}: a file; expected a stage output folder (one with {MANIFEST_NAME})")
    if not has_manifest(p) and has_manifest(p.parent):
        return p.parent
    return p


def has_manifest(d: Path) -> bool:
    """Whether `d` holds a stage manifest (whole-run or one per shard slice)."""
    return (d / MANIFEST_NAME).is_file() or any(
        _SHARD_MANIFEST_RE.match(x.name) for x in d.glob("manifest-shard-*.json")
    )


def _merge_shard_manifests(d: Path, paths: list[Path]) -> Manifest:
    """One manifest for a run split into n slices; refuse mixed or incomplete shardings."""
    parsed = {p: tuple(int(x) for x in _SHARD_MANIFEST_RE.match(p.name).groups()) for p in paths}  # type: ignore[union-attr]
    ns = sorted({n for _, n in parsed.values()})
    if len(ns) > 1:
        raise CxrctxError(
            f"{d}: mixed shardings in one folder (slices of {' and '.join(map(str, ns))}); "
            "use one --out per sharding"
        )
    n = ns[0]
    have = {i for i, _ in parsed.values()}
    missing = sorted(set(range(n)) - have)
    if missing:
        raise CxrctxError(
            f"{d}: incomplete sharded run: {len(have)} of {n} slices have a manifest "
            f"(missing --shard {', '.join(f'{i}/{n}' for i in missing[:8])}{' ...' if len(missing) > 8 else ''})"
        )
    parts = [_read_manifest_checked(p) for p in sorted(paths, key=lambda p: parsed[p][0])]
    stages = {m.stage for m in parts}
    if len(stages) > 1:
        raise CxrctxError(f"{d}: shard manifests of different stages ({', '.join(sorted(stages))})")
    counts: dict[str, int] = {}
    for m in parts:
        for k, v in m.counts.items():
            counts[k] = counts.get(k, 0) + v
    inputs = {i.path: i for m in parts for i in m.inputs}
    first = parts[0]
    return first.model_copy(
        update={
            "config": {k: v for k, v in first.config.items() if k != "shard"},
            "inputs": list(inputs.values()),
            "shards": [s for m in parts for s in m.shards],
            "tables": [t for m in parts for t in m.tables],
            "files": [f for m in parts for f in m.files],
            "counts": counts,
            "extra": {**first.extra, "sharded": n},
        }
    )


def load_stage(path: str | os.PathLike, expect: tuple[str, ...] = ()) -> Stage:
    """Resolve `path` to a stage folder and read its (complete) manifest; no file checks.
    `expect`: the stage(s) wanted, named with their command when the folder is not one."""
    d = _resolve_stage_dir(path)
    main = d / MANIFEST_NAME
    sharded = sorted(x for x in d.glob("manifest-shard-*.json") if _SHARD_MANIFEST_RE.match(x.name))
    if main.is_file():
        if sharded:
            raise CxrctxError(
                f"{d}: holds both a whole-input manifest.json and slice manifests "
                f"({sharded[0].name}, ...): outputs of two runs are mixed; use one --out per run"
            )
        m = _read_manifest_checked(main)
        paths = [main]
    elif sharded:
        m = _merge_shard_manifests(d, sharded)
        paths = sharded
    else:
        from cxrctx.output_policy import no_manifest_error

        raise no_manifest_error(d, expect)
    if m.tool != "cxrctx":
        raise CxrctxError(f"{paths[0]}: written by {m.tool!r}, not cxrctx")
    return Stage(d, m, paths)


def check_shard_slot(out: str | os.PathLike, shard: tuple[int, int] | None) -> None:
    """Before a (sliced) run writes into `out`: refuse mixing shardings in one folder.

    Slice i/n may join slices of the same n; a whole-input run and slices never share a
    folder, nor do slices of different n (their parts and counts would not add up)."""
    d = Path(out)
    if not d.is_dir():
        return
    ns = sorted(
        {
            int(m.group(2))
            for x in d.glob("manifest-shard-*.json")
            if (m := _SHARD_MANIFEST_RE.match(x.name))
        }
    )
    whole = (d / MANIFEST_NAME).is_file()
    if shard is None and ns:
        raise CxrctxError(
            f"{d}: holds slices of a --shard run (of {ns[0]}); a whole-input run needs another --out"
        )
    if shard is not None and whole:
        raise CxrctxError(
            f"{d}: holds a whole-input run; --shard {shard[0]}/{shard[1]} needs another --out"
        )
    if shard is not None and set(ns) - {shard[1]}:
        other = ", ".join(map(str, sorted(set(ns) - {shard[1]})))
        raise CxrctxError(
            f"{d}: holds slices of {other}; --shard {shard[0]}/{shard[1]} would mix shardings: use another --out"
        )


def stage_inputs(st: Stage) -> list[InputFile]:
    """A consumer's manifest inputs: the producer's shards as `<stage>/<path>` with sha256."""
    return [
        InputFile(
            path=f"{st.name}/{s.path}", size=(st.dir / s.path).stat().st_size, sha256=s.sha256
        )
        for s in st.manifest.shards
    ]


def _count_rows(f: Path) -> int:
    if f.suffix == ".parquet":
        return pq.ParquetFile(f).metadata.num_rows
    if f.suffix in (".jsonl", ".ndjson"):
        return jsonl.count_rows(f)
    raise ValueError(f"cannot count rows of {f.suffix} files")


def check_stage(st: Stage, *, verify: str = "sha256") -> list[str]:
    """Every problem with a stage folder's files against its manifest, one line each.

    `verify`: "sha256" (rows and checksums), "rows" (row counts only: cheap), "exists"."""
    if verify not in ("sha256", "rows", "exists"):
        raise ValueError(f"verify must be sha256, rows or exists, not {verify!r}")
    mname = st.manifest_paths[0].name if st.manifest_paths else MANIFEST_NAME
    problems: list[str] = []
    listed: set[Path] = set()
    for info in [*st.manifest.shards, *st.manifest.tables]:
        f = st.dir / info.path
        listed.add(f.resolve())
        if not f.is_file():
            problems.append(f"{f}: listed in {mname} but missing")
            continue
        if verify == "exists":
            continue
        try:
            rows = _count_rows(f)
        except Exception as e:
            problems.append(f"{f}: unreadable, truncated or corrupt ({type(e).__name__})")
            continue
        if rows != info.rows:
            problems.append(f"{f}: {rows} rows, {mname} says {info.rows}")
        elif verify == "sha256" and sha256_file(f) != info.sha256:
            problems.append(f"{f}: sha256 differs from {mname} (modified or corrupt)")
    for entry in st.manifest.files:
        f = st.dir / entry.path
        listed.add(f.resolve())
        if not f.is_file():
            problems.append(f"{f}: listed in {mname} but missing")
        elif verify == "sha256" and sha256_file(f) != entry.sha256:
            problems.append(f"{f}: sha256 differs from {mname} (modified or corrupt)")
    for folder in sorted({(st.dir / s.path).parent for s in st.manifest.shards}):
        for x in sorted(folder.glob("part-*.parquet")):
            if x.resolve() not in listed:
                problems.append(f"{x}: not listed in {mname} (left over from another run?)")
    return problems


def open_stage(
    path: str | os.PathLike,
    expect: str | tuple[str, ...] | list[str] | None = None,
    *,
    verify: str = "sha256",
) -> Stage:
    """Resolve and check a stage output folder before reading it.

    Refuses, with a one-line `CxrctxError` naming the file: a missing or unfinished
    manifest (an interrupted run), an incomplete or mixed sharded run, a folder of another
    stage than `expect`, a schema version newer than this cxrctx reads, and any listed file
    that is missing, truncated, has another row count or another sha256."""
    wanted = (expect,) if isinstance(expect, str) else tuple(expect or ())
    st = load_stage(path, wanted)
    if wanted and st.name not in wanted:
        raise CxrctxError(
            f"{st.manifest_paths[0]}: a {st.name} output; expected {' or '.join(wanted)} output"
        )
    known = SCHEMA_VERSIONS.get(st.name)
    if known is not None and st.manifest.schema_version > known:
        raise CxrctxError(
            f"{st.manifest_paths[0]}: {st.name} schema version {st.manifest.schema_version} is newer "
            f"than this cxrctx reads ({known}); upgrade cxrctx"
        )
    problems = check_stage(st, verify=verify)
    if problems:
        more = (
            f" (and {len(problems) - 1} more; see `cxrctx validate {st.dir}`)"
            if len(problems) > 1
            else ""
        )
        raise CxrctxError(problems[0] + more)
    return st


__all__ = [
    "SCHEMA_VERSIONS",
    "SHARDED_PATTERN",
    "SHARD_PATTERN",
    "Stage",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_shard_slot",
    "check_stage",
    "config_hash",
    "file_entry",
    "has_manifest",
    "host_name",
    "input_file",
    "load_stage",
    "open_stage",
    "read_manifest",
    "read_shards",
    "sha256_bytes",
    "sha256_file",
    "shard_name",
    "shard_paths",
    "stage_inputs",
    "write_manifest",
    "write_parquet",
    "write_shards",
    "write_stage_manifest",
]
