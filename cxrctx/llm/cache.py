"""Append-only JSONL result cache keyed by a content hash, with flat memory.

Each finished batch is appended as complete lines and fsynced, so a run killed with
SIGKILL loses at most the batch in flight. Lines are read and written by `cxrctx.jsonl`;
on load, bad lines are skipped and counted, never fatal: a torn last line (a kill mid
append), a line that is not a JSON object, an object without a sha256-hex `key` (e.g. a
foreign cache copied in by `rebuild --label-cache`). Every writer (process, shard) appends
to its own file, so parallel shards never interleave.
Memory holds only an index (key digest -> file and offset, ~0.2 KB per entry); an entry
is read back from disk when it is hit. Without a directory the cache lives in memory
(tests, one-off library calls).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import IO, Any

from cxrctx import jsonl
from cxrctx.errors import CxrctxError

log = logging.getLogger(__name__)

_OFFSET_BITS = 48
_HEX_KEY = re.compile(r"[0-9a-f]{64}")


def cache_key(**parts: Any) -> str:
    """sha256 of the canonical JSON of the parts (request, backend, model, base_url, prompt,
    schema, sampling, ...)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _digest(key: Any) -> bytes | None:
    """The 32-byte digest of a well-formed key (64 lowercase hex digits), else None."""
    return bytes.fromhex(key) if isinstance(key, str) and _HEX_KEY.fullmatch(key) else None


class ResultCache:
    """`get(key)` / `put_many(entries)`; each entry is a JSON object with a `key` field."""

    def __init__(self, directory: str | os.PathLike | None, writer: str = "main"):
        self.dir = Path(directory) if directory is not None else None
        self._memory: dict[str, dict[str, Any]] = {}
        self._index: dict[bytes, int] = {}
        self._files: list[Path] = []
        self._readers: dict[int, IO[bytes]] = {}
        self._fh: IO[bytes] | None = None
        self.bad = jsonl.BadLines()  # lines skipped on load, by reason
        self._own: int | None = None
        self._writer = writer
        if self.dir is not None and self.dir.exists():
            self._load()

    def __len__(self) -> int:
        return len(self._memory) + len(self._index)

    def _load(self) -> None:
        assert self.dir is not None
        for f in sorted(self.dir.glob("*.jsonl")):
            idx = len(self._files)
            self._files.append(f)
            for offset, entry in jsonl.scan(f, self.bad):
                digest = _digest(entry.get("key"))
                if digest is None:
                    self.bad.rejected += 1
                else:
                    self._index[digest] = (idx << _OFFSET_BITS) | offset
        if self.bad.total:
            log.info("cache %s: skipped bad lines (%s)", self.dir, self.bad)

    def get(self, key: str) -> dict[str, Any] | None:
        if self.dir is None:
            return self._memory.get(key)
        digest = _digest(key)
        loc = self._index.get(digest) if digest is not None else None
        if loc is None:
            return None
        idx, offset = loc >> _OFFSET_BITS, loc & ((1 << _OFFSET_BITS) - 1)
        fh = self._readers.get(idx)
        if fh is None:
            fh = self._readers[idx] = open(self._files[idx], "rb")
        entry = jsonl.read_at(fh, offset)
        return entry if entry is not None and entry.get("key") == key else None

    def put_many(self, entries: list[dict[str, Any]]) -> None:
        """Append finished entries (key first on each line) and fsync them."""
        if not entries:
            return
        if self.dir is None:
            for e in entries:
                self._memory[e["key"]] = e
            return
        path = self.dir / f"{self._writer}-{os.getpid()}.jsonl"
        try:
            self._append(path, entries)
        except OSError as e:
            self._drop_writer()  # its buffer holds the unwritten lines: not flushed again
            raise CxrctxError(f"{path}: cannot write the result cache ({e.strerror or e})") from e

    def _append(self, path: Path, entries: list[dict[str, Any]]) -> None:
        """Write, flush and fsync the lines, then index them (a failed write indexes none)."""
        if self._fh is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = jsonl.open_append(path)
            self._own = len(self._files)
            self._files.append(path)
        assert self._own is not None
        offset = self._fh.tell()
        added = []
        with jsonl.writer(self._fh) as w:
            for e in entries:
                added.append((bytes.fromhex(e["key"]), offset))
                offset += w.write({"key": e["key"], **{k: v for k, v in e.items() if k != "key"}})
        self._fh.flush()
        os.fsync(self._fh.fileno())
        for digest, at in added:
            self._index[digest] = (self._own << _OFFSET_BITS) | at

    def _drop_writer(self) -> None:
        """Close the append handle after a failed write; a torn line it left is skipped on
        load and ended before the next append."""
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        for fh in self._readers.values():
            fh.close()
        self._readers.clear()

    def __enter__(self) -> ResultCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
