"""What reading and writing JSON Lines through `jsonlines` (cxrctx.jsonl) costs, against the
hand-written paths it replaced, in the same run:

- records.jsonl / the jsonl export: `jsonl.write_frame` vs polars' `write_ndjson` on a
  build-priors records frame repeated to N rows (the bytes must be identical);
- the LLM result cache: `ResultCache` load (every line parsed and checked by jsonlines) vs
  the old prefix scan (a line is trusted when it starts with `{"key":"` + 64 characters), and
  `put_many` vs the old `json.dumps(...).encode() + b"\\n"` append, on M entries of ~1.3 KB.

Usage: python benchmarks/jsonl_cost.py RECORDS_DIR [--rows N] [--entries M] [--repeat R]
(RECORDS_DIR: a build-priors output, e.g. of examples/mimic-mini.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import polars as pl

from cxrctx import jsonl
from cxrctx.io import read_shards
from cxrctx.llm.cache import ResultCache, cache_key


def _records(src: Path, rows: int) -> pl.DataFrame:
    rec = read_shards(src / "records")
    iso = "%Y-%m-%dT%H:%M:%S%.f"
    rec = rec.with_columns(
        pl.col("study_datetime").dt.to_string(iso),
        pl.col("priors").list.eval(
            pl.element().struct.with_fields(pl.field("study_datetime").dt.to_string(iso))
        ),
    )
    return pl.concat([rec] * (rows // rec.height + 1)).head(rows)


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _old_load(d: Path) -> int:
    """The pre-jsonlines cache load: index lines by their key prefix, parse nothing."""
    index = {}
    for f in sorted(d.glob("*.jsonl")):
        offset = 0
        with open(f, "rb") as fh:
            for line in fh:
                if line.endswith(b"\n") and line.startswith(b'{"key":"') and line[72:73] == b'"':
                    index[bytes.fromhex(line[8:72].decode())] = offset
                offset += len(line)
    return len(index)


def _old_write(path: Path, entries: list[dict]) -> None:
    with open(path, "ab") as fh:
        for e in entries:
            fh.write(json.dumps(e, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
        fh.flush()
        os.fsync(fh.fileno())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("records", type=Path)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="jsonl-cost-"))
    rec = _records(a.records, a.rows)
    t_pl = _best(lambda: rec.write_ndjson(tmp / "polars.jsonl"), a.repeat)
    t_jl = _best(lambda: jsonl.write_frame(rec, tmp / "ours.jsonl"), a.repeat)
    same = (tmp / "polars.jsonl").read_bytes() == (tmp / "ours.jsonl").read_bytes()
    mb = (tmp / "ours.jsonl").stat().st_size / 1e6
    print(f"records.jsonl, {a.rows:,} rows, {mb:.0f} MB, identical bytes: {same}")
    print(
        f"  polars write_ndjson {t_pl:.2f} s | jsonl.write_frame {t_jl:.2f} s | x{t_jl / t_pl:.1f}"
    )

    raw = "x" * 1200
    entries = [{"key": cache_key(i=i), "raw_text": raw, "answer": {"word": "w"}}
               for i in range(a.entries)]  # fmt: skip
    batches = [entries[i : i + 256] for i in range(0, len(entries), 256)]

    def new_write() -> None:
        d = Path(tempfile.mkdtemp(dir=tmp))
        with ResultCache(d) as c:
            for b in batches:
                c.put_many(b)

    def old_write() -> None:
        d = Path(tempfile.mkdtemp(dir=tmp))
        for b in batches:
            _old_write(d / "main.jsonl", b)

    t_ow, t_nw = _best(old_write, a.repeat), _best(new_write, a.repeat)
    cache = Path(tempfile.mkdtemp(dir=tmp))
    with ResultCache(cache) as c:
        for b in batches:
            c.put_many(b)

    def new_load() -> None:
        with ResultCache(cache) as c:
            assert len(c) == a.entries

    t_ol = _best(lambda: _old_load(cache), a.repeat)
    t_nl = _best(new_load, a.repeat)
    print(f"result cache, {a.entries:,} entries in batches of 256")
    print(f"  write: hand-written {t_ow:.2f} s | jsonlines {t_nw:.2f} s | x{t_nw / t_ow:.1f}")
    print(f"  load:  prefix scan {t_ol:.2f} s | jsonlines {t_nl:.2f} s | x{t_nl / t_ol:.1f}")


if __name__ == "__main__":
    main()
