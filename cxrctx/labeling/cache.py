"""Append-only JSONL result cache keyed by content hash.

Each finished batch is appended as complete lines and fsynced, so a run killed with
SIGKILL loses at most the batch in flight; a torn last line is ignored on load. Every
writer (process, shard) appends to its own file, so parallel shards never interleave.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def cache_key(**parts: Any) -> str:
    """sha256 of the canonical JSON of the parts (text hash, backend, model, prompt, schema, sampling)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResultCache:
    def __init__(self, directory: str | os.PathLike | None, writer: str = "main"):
        self.dir = Path(directory) if directory is not None else None
        self.entries: dict[str, dict[str, Any]] = {}
        self._fh = None
        self._writer = writer
        if self.dir is not None and self.dir.exists():
            self._load()

    def _load(self) -> None:
        assert self.dir is not None
        torn = 0
        for f in sorted(self.dir.glob("*.jsonl")):
            with open(f, "rb") as fh:
                for line in fh:
                    try:
                        e = json.loads(line)
                        self.entries[e["key"]] = e
                    except (json.JSONDecodeError, KeyError, TypeError):
                        torn += 1
        if torn:
            log.info("cache: ignored %d torn line(s)", torn)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def put_many(self, entries: list[dict[str, Any]]) -> None:
        for e in entries:
            self.entries[e["key"]] = e
        if self.dir is None or not entries:
            return
        if self._fh is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.dir / f"{self._writer}-{os.getpid()}.jsonl", "ab")
        data = b"".join(
            json.dumps(e, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
            for e in entries
        )
        self._fh.write(data)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
