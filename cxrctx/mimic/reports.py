"""Read, hash and section report texts, in chunks, in worker processes.

A worker gets a chunk of report paths (relative to the root, or zip entry names) and
returns plain column lists, so nothing heavier than strings crosses the process
boundary. The zip is opened once per worker and entries are read into memory by their
`ZipInfo`; nothing is ever extracted to disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
import zipfile
from collections.abc import Iterator

from cxrctx.mimic.sections import FIELDS, has_temporal_reference, parse_report

#: Columns returned per chunk, beside the section FIELDS.
META_FIELDS = ("report_sha256", "report_error", "report_error_detail")

_ZIPS: dict[tuple, zipfile.ZipFile] = {}


def _zip(path: str) -> zipfile.ZipFile:
    """One open ZipFile per process and file version (reading a central directory is slow).

    The key holds the pid so a forked worker never shares the parent's file offset, and
    the file's mtime and size so a rewritten zip is reopened.
    """
    st = os.stat(path)
    key = (os.getpid(), path, st.st_mtime_ns, st.st_size)
    zf = _ZIPS.get(key)
    if zf is None:
        for old in [k for k in _ZIPS if k[0] != key[0] or k[1] == path]:
            if old[0] == key[0]:
                _ZIPS[old].close()
            del _ZIPS[old]
        zf = _ZIPS[key] = zipfile.ZipFile(path)
    return zf


def read_one(
    root: str, zip_path: str | None, rel: str
) -> tuple[bytes | None, str | None, str | None]:
    """(bytes, error reason, detail) for one report."""
    try:
        if zip_path is not None:
            return _zip(zip_path).read(rel), None, None
        # os.open/os.read: no buffered file object per report (228k of them at full scale).
        fd = os.open(os.path.join(root, rel), os.O_RDONLY)
        try:
            parts = []
            while block := os.read(fd, 1 << 16):
                parts.append(block)
        finally:
            os.close(fd)
        return b"".join(parts), None, None
    except (FileNotFoundError, NotADirectoryError, KeyError):
        return None, "missing_report", "file not found"
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as e:
        return None, "unreadable_report", type(e).__name__


def process_chunk(args: tuple[str, str | None, list[str]]) -> dict[str, list]:
    """Read and section each report of the chunk; returns column lists in chunk order."""
    root, zip_path, rels = args
    cols: dict[str, list] = {k: [] for k in (*META_FIELDS, *FIELDS)}
    empty = (None,) * len(FIELDS)
    for rel in rels:
        data, err, detail = read_one(root, zip_path, rel)
        sha = None
        sections: tuple = empty
        if data is not None:
            sha = hashlib.sha256(data).hexdigest()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                err, detail = "non_utf8_report", f"invalid UTF-8 at byte {e.start}"
            else:
                if not text.strip():
                    err, detail = "empty_report", "no text"
                else:
                    sections = parse_report(text)
        cols["report_sha256"].append(sha)
        cols["report_error"].append(err)
        cols["report_error_detail"].append(detail)
        for k, v in zip(FIELDS, sections, strict=True):
            cols[k].append(v)
    return cols


def temporal_chunk(pairs: list[tuple[str | None, str | None]]) -> list[bool]:
    """`has_temporal_reference(findings, impression)` for each pair."""
    return [has_temporal_reference(f, i) for f, i in pairs]


def mp_context():
    """The start method for our worker pools: fork where the OS has it, else spawn.

    spawn and forkserver re-run the caller's `__main__`, so a three-line script without an
    `if __name__ == "__main__":` guard would crash; fork does not. The children only run
    pure-Python code (hashlib, zipfile, re, pydicom), never polars, so polars' threads in
    the parent cannot deadlock them. Python ≥ 3.12 warns about fork in a threaded process;
    callers silence that one warning with `quiet_fork()`.
    """
    import multiprocessing as mp

    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


@contextlib.contextmanager
def quiet_fork() -> Iterator[None]:
    """Hide Python's 'multi-threaded, use of fork() may lead to deadlocks' DeprecationWarning."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r".*use of fork\(\) may lead to deadlocks.*",
            category=DeprecationWarning,
        )
        yield
