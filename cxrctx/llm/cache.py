"""Append-only JSONL result cache keyed by a content hash, with flat memory.

Each finished batch is appended as complete lines and fsynced, so a run killed with
SIGKILL loses at most the batch in flight; a torn last line is ignored on load. Every
writer (process, shard) appends to its own file, so parallel shards never interleave.
Memory holds only an index (key digest -> file and offset, ~0.2 KB per entry); an entry
is read back from disk when it is hit. Without a directory the cache lives in memory
(tests, one-off library calls).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger(__name__)

_PREFIX = b'{"key":"'
_OFFSET_BITS = 48


def cache_key(**parts: Any) -> str:
    """sha256 of the canonical JSON of the parts (request, backend, model, base_url, prompt,
    schema, sampling, ...)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _line_key(line: bytes) -> str | None:
    """The key of one complete cache line without parsing the whole entry."""
    if line.startswith(_PREFIX) and line[72:73] == b'"':
        return line[8:72].decode("ascii", "replace")
    try:
        return str(json.loads(line)["key"])
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        return None


class ResultCache:
    """`get(key)` / `put_many(entries)`; each entry is a JSON object with a `key` field."""

    def __init__(self, directory: str | os.PathLike | None, writer: str = "main"):
        self.dir = Path(directory) if directory is not None else None
        self._memory: dict[str, dict[str, Any]] = {}
        self._index: dict[bytes, int] = {}
        self._files: list[Path] = []
        self._readers: dict[int, BinaryIO] = {}
        self._fh: BinaryIO | None = None
        self._own: int | None = None
        self._writer = writer
        if self.dir is not None and self.dir.exists():
            self._load()

    def __len__(self) -> int:
        return len(self._memory) + len(self._index)

    def _load(self) -> None:
        assert self.dir is not None
        torn = 0
        for f in sorted(self.dir.glob("*.jsonl")):
            idx = len(self._files)
            self._files.append(f)
            offset = 0
            with open(f, "rb") as fh:
                for line in fh:
                    key = _line_key(line) if line.endswith(b"\n") else None
                    if key is None:
                        torn += 1
                    else:
                        self._index[bytes.fromhex(key)] = (idx << _OFFSET_BITS) | offset
                    offset += len(line)
        if torn:
            log.info("cache: ignored %d torn line(s)", torn)

    def get(self, key: str) -> dict[str, Any] | None:
        if self.dir is None:
            return self._memory.get(key)
        try:
            loc = self._index.get(bytes.fromhex(key))
        except ValueError:
            return None
        if loc is None:
            return None
        idx, offset = loc >> _OFFSET_BITS, loc & ((1 << _OFFSET_BITS) - 1)
        fh = self._readers.get(idx)
        if fh is None:
            fh = self._readers[idx] = open(self._files[idx], "rb")
        fh.seek(offset)
        try:
            entry = json.loads(fh.readline())
        except json.JSONDecodeError:
            return None
        return entry if isinstance(entry, dict) and entry.get("key") == key else None

    def put_many(self, entries: list[dict[str, Any]]) -> None:
        """Append finished entries (key first on each line) and fsync them."""
        if not entries:
            return
        if self.dir is None:
            for e in entries:
                self._memory[e["key"]] = e
            return
        if self._fh is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            path = self.dir / f"{self._writer}-{os.getpid()}.jsonl"
            self._fh = open(path, "ab")
            self._own = len(self._files)
            self._files.append(path)
        assert self._own is not None
        offset = self._fh.tell()
        chunks = []
        for e in entries:
            body = {"key": e["key"], **{k: v for k, v in e.items() if k != "key"}}
            line = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
            self._index[bytes.fromhex(e["key"])] = (self._own << _OFFSET_BITS) | offset
            offset += len(line)
            chunks.append(line)
        self._fh.write(b"".join(chunks))
        self._fh.flush()
        os.fsync(self._fh.fileno())

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
