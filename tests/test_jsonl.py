"""JSON Lines through `cxrctx.jsonl` (jsonlines): strict readers for inputs, a tolerant scan
for the result cache (torn, foreign, non-hex lines skipped and counted), and the cache's
one-line error on a full disk."""

from __future__ import annotations

import errno
import io
import json

import polars as pl
import pytest
from typer.testing import CliRunner

from cxrctx import jsonl
from cxrctx.cli import app
from cxrctx.errors import CxrctxError
from cxrctx.llm.cache import ResultCache, cache_key

KEYS = [cache_key(i=i) for i in range(3)]


def _fill(d, n=3):
    with ResultCache(d) as c:
        c.put_many([{"key": KEYS[i], "answer": f"é{i}"} for i in range(n)])
    return next(d.glob("*.jsonl"))


def test_cache_lines_are_compact_utf8_with_the_key_first(tmp_path):
    f = _fill(tmp_path, 1)
    assert f.read_bytes() == f'{{"key":"{KEYS[0]}","answer":"é0"}}\n'.encode()


def test_cache_skips_and_counts_bad_lines_and_keeps_the_good(tmp_path):
    f = _fill(tmp_path)
    foreign = [
        json.dumps({"key": "z" * 64, "answer": "x"}),  # well-formed, key not hex
        json.dumps({"key": 7}),  # key not a string
        json.dumps({"answer": "no key"}),
        "[1, 2]",  # JSON, not an object
        "",  # blank
        "not json",
    ]
    f.write_bytes(f.read_bytes() + ("\n".join(foreign) + "\n").encode() + b'{"key":"ab", "to')
    with ResultCache(tmp_path) as c:
        assert len(c) == 3 and c.get(KEYS[1])["answer"] == "é1"
        assert (c.bad.torn, c.bad.invalid, c.bad.rejected) == (1, 3, 3)
        assert c.get("z" * 64) is None and c.get("not hex") is None


def test_append_after_a_torn_line_starts_a_new_line(tmp_path):
    f = _fill(tmp_path, 1)
    f.write_bytes(f.read_bytes() + b'{"key":"ab", "to')
    with ResultCache(tmp_path) as c:  # same writer and pid: appends to the same file
        c.put_many([{"key": KEYS[2], "answer": "new"}])
    assert f.read_bytes().endswith(f'"to\n{{"key":"{KEYS[2]}","answer":"new"}}\n'.encode())
    with ResultCache(tmp_path) as c:
        assert c.get(KEYS[2])["answer"] == "new" and c.bad.invalid == 1 and c.bad.torn == 0


class _FullDisk(io.RawIOBase):
    """A writable binary file on a full disk."""

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return 0

    def write(self, b) -> int:  # type: ignore[override]
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_a_one_line_error_naming_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr("cxrctx.llm.cache.jsonl.open_append", lambda path: _FullDisk())
    with ResultCache(tmp_path) as c, pytest.raises(CxrctxError) as e:
        c.put_many([{"key": KEYS[0], "answer": "x"}])
    assert "cannot write the result cache (No space left on device)" in str(e.value)
    assert c.get(KEYS[0]) is None  # nothing indexed that was not written


def test_structure_reports_on_a_full_disk_exits_with_one_line(tmp_path, monkeypatch):
    from cxrctx.llm.fake import FakeEngine

    src = tmp_path / "r.jsonl"
    jsonl.write(src, [{"id": "1", "findings": "No effusion.", "impression": "Normal."}])
    monkeypatch.setattr("cxrctx.structure.run.make_engine", lambda spec: FakeEngine("m"))
    monkeypatch.setattr("cxrctx.llm.cache.jsonl.open_append", lambda path: _FullDisk())
    r = CliRunner().invoke(
        app, ["structure-reports", str(src), "--out", str(tmp_path / "o"), "--model", "m.gguf"]
    )
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    errors = [ln for ln in r.output.splitlines() if not ln.startswith("structure-reports ")]
    assert len(errors) == 1, r.output  # besides the progress lines
    assert "cache" in errors[0] and "No space left on device" in errors[0]


def test_read_frame_names_the_bad_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"id": "1", "text": "a"}\n\n{"id": "2", "text": \n')
    with pytest.raises(CxrctxError, match=r"d\.jsonl: line 3: line contains invalid json"):
        jsonl.read_frame(p)
    p.write_text('{"id": "1"}\n[1]\n')
    with pytest.raises(CxrctxError, match=r"d\.jsonl: line 2: line does not match"):
        jsonl.read_frame(p)


def test_read_frame_takes_types_from_every_row_and_nulls_missing_keys(tmp_path):
    p = tmp_path / "d.jsonl"
    jsonl.write(p, [{"id": "1"}, *({"id": str(i)} for i in range(2, 200)), {"id": "x", "t": 2}])
    df = jsonl.read_frame(p)
    assert df.height == 200 and df.schema == {"id": pl.String, "t": pl.Int64}
    assert df["t"].null_count() == 199


def test_write_frame_writes_the_bytes_polars_wrote(tmp_path):
    """Released JSONL keeps its checksums: same bytes as polars' write_ndjson (nested,
    unicode, escapes, nulls, integers)."""
    df = pl.DataFrame({
        "s": ["é ü 中文 😀", 'tab\tnl\nq"bs\\', "\x01\x1f\x7f", None],
        "i": [1, -2, 2**40, None],
        "b": [True, False, None, True],
        "l": [["a"], [], None, ["x", None]],
        "st": [{"a": 1, "b": "x"}, None, {"a": None, "b": "y"}, {"a": 2, "b": None}],
    })  # fmt: skip
    df.write_ndjson(tmp_path / "polars.jsonl")
    jsonl.write_frame(df, tmp_path / "ours.jsonl")
    assert (tmp_path / "ours.jsonl").read_bytes() == (tmp_path / "polars.jsonl").read_bytes()


def test_count_rows_skips_blank_lines(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"a":1}\n\n  \n{"a":2}\n')
    assert jsonl.count_rows(p) == 2


def test_scan_gives_offsets_of_good_lines(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"a":1}\nbad\n{"a":2}\n{"a":')
    bad = jsonl.BadLines()
    got = list(jsonl.scan(p, bad))
    assert got == [(0, {"a": 1}), (12, {"a": 2})] and str(bad) == "1 torn, 1 invalid"
    with open(p, "rb") as fh:
        assert jsonl.read_at(fh, 12) == {"a": 2} and jsonl.read_at(fh, 8) is None


def test_a_resume_survives_a_foreign_cache_line(tmp_path):
    """A cache copied in from elsewhere (`rebuild --label-cache`) with a well-formed line
    whose key is not hex: the re-run resumes from the good lines instead of crashing."""
    from cxrctx.labeling import label_lesions
    from cxrctx.llm.fake import FakeEngine

    docs = tmp_path / "d.jsonl"
    texts = ["Small left pleural effusion.", "Mild cardiomegaly.", "Right lower lobe opacity."]
    jsonl.write(docs, [{"id": str(i), "text": t} for i, t in enumerate(texts)])
    first = FakeEngine("m")
    label_lesions(docs, tmp_path / "o", engine=first)
    assert first.calls > 0
    f = next((tmp_path / "o" / "cache").glob("*.jsonl"))
    f.write_bytes(f.read_bytes() + json.dumps({"key": "not-hex", "status": "ok"}).encode() + b"\n")
    again = FakeEngine("m")
    run = label_lesions(docs, tmp_path / "o", engine=again)
    assert again.calls == 0 and run.result is not None
