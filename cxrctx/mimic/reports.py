"""Read, hash and section report texts, in chunks, in worker processes.

A worker gets a chunk of report paths (relative to the root, or zip entry names) and
returns plain column lists, so nothing heavier than strings crosses the process
boundary. The zip is opened once per worker and entries are read into memory by their
`ZipInfo`; nothing is ever extracted to disk.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import os
import stat
import warnings
import zipfile
import zlib
from collections.abc import Iterator

from cxrctx.errors import CxrctxError
from cxrctx.limits import TOO_LARGE, too_large_detail
from cxrctx.mimic.sections import FIELDS, parse_report

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


#: Zip compression methods Python's zipfile can read (stored, deflate, bzip2, lzma).
_ZIP_METHODS = {0: "stored", 8: "deflate", 12: "bzip2", 14: "lzma"}
_ZIP_NAMES = {9: "Deflate64", 6: "implode", 93: "zstd", 98: "PPMd"}
Read = tuple[bytes | None, str | None, str | None]


def _too_large(size: int, max_bytes: int) -> Read:
    return None, TOO_LARGE, too_large_detail(size, max_bytes)


def read_entry(zip_path: str, rel: str, max_bytes: int) -> Read:
    """(bytes, error reason, detail) for one zip entry; a bad entry is a reason, not a crash."""
    zf = _zip(zip_path)
    try:
        info = zf.getinfo(rel)
    except KeyError:
        return None, "missing_report", "file not found"
    if info.flag_bits & 0x1:
        return None, "unreadable_report", "encrypted zip entry"
    if info.compress_type not in _ZIP_METHODS:
        name = _ZIP_NAMES.get(info.compress_type, "unknown")
        return (
            None,
            "unreadable_report",
            f"unsupported compression method {info.compress_type} ({name})",
        )
    if info.file_size > max_bytes:
        return _too_large(info.file_size, max_bytes)
    try:
        with zf.open(info) as f:
            data = f.read(max_bytes + 1)  # never more than the cap, whatever the header says
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, RuntimeError) as e:
        return None, "unreadable_report", f"corrupt zip entry ({type(e).__name__}: {e})"
    if len(data) > max_bytes:
        return _too_large(len(data), max_bytes)
    return data, None, None


def read_file(root: str, rel: str, max_bytes: int, linked: bool = False) -> Read:
    """(bytes, error reason, detail) for one report file: a regular file inside the root.

    Opened without following a final symlink and without blocking (a FIFO would hang a
    blocking open); a symlink is followed only when it resolves inside the root.
    os.open/os.read: no buffered file object per report (228k of them at full scale).
    """
    path = os.path.join(root, rel)
    try:
        if linked and not _inside(root, path):
            return None, "unreadable_report", "symlinked folder leads outside the root"
        try:
            fd = os.open(path, _OPEN_FLAGS | _NOFOLLOW)
        except OSError as e:
            if e.errno != errno.ELOOP or not _NOFOLLOW:
                raise
            if not _inside(root, path):
                return None, "unreadable_report", "symlink leads outside the root"
            fd = os.open(path, _OPEN_FLAGS)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None, "unreadable_report", "not a regular file"
            if st.st_size > max_bytes:
                return _too_large(st.st_size, max_bytes)
            # A short read of a regular file is its end: one read for a whole report.
            data = os.read(fd, st.st_size + 1)
            while st.st_size < len(data) <= max_bytes:  # it grew since fstat: read on
                block = os.read(fd, 1 << 16)
                if not block:
                    break
                data += block
        finally:
            os.close(fd)
    except (FileNotFoundError, NotADirectoryError):
        return None, "missing_report", "file not found"
    except OSError as e:
        return None, "unreadable_report", f"{type(e).__name__}: {e.strerror or e}"
    if len(data) > max_bytes:
        return _too_large(len(data), max_bytes)
    return data, None, None


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _inside(root: str, path: str) -> bool:
    real_root = os.path.realpath(root)
    return os.path.realpath(path).startswith(real_root + os.sep)


#: Index columns returned per chunk (before META_FIELDS and the section FIELDS).
INDEX_FIELDS = ("study_id", "subject_id", "report_path")

FolderChunk = tuple[str, list[tuple[str, bool]], int]
"""(root, [(patient folder relative to the root, under a linked folder)], size cap in bytes)."""
EntryChunk = tuple[str, list[tuple[int, int, str]], int]
"""(zip path, [(study_id, subject_id, entry name)], size cap in bytes)."""


def _empty_columns() -> dict[str, list]:
    return {k: [] for k in (*INDEX_FIELDS, *META_FIELDS, *FIELDS)}


_EMPTY_SECTIONS = (None,) * len(FIELDS)


def _add(cols: dict[str, list], ids: tuple[int, int, str], read: Read) -> None:
    """Hash, decode and section one report's bytes into the chunk's columns."""
    data, err, detail = read
    sha = None
    sections: tuple = _EMPTY_SECTIONS
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
    for k, v in zip(INDEX_FIELDS, ids, strict=True):
        cols[k].append(v)
    cols["report_sha256"].append(sha)
    cols["report_error"].append(err)
    cols["report_error_detail"].append(detail)
    for k, v in zip(FIELDS, sections, strict=True):
        cols[k].append(v)


def folder_reports(root: str, folder: str) -> list[tuple[int, int, str]]:
    """(subject_id, study_id, path relative to the root) of each sNNNNNNNN.txt report in
    one patient folder, sorted by name; image folders (sNNNNNNNN/) are never entered."""
    path = os.path.join(root, folder)
    try:
        names = os.listdir(path)
    except (NotADirectoryError, FileNotFoundError):
        return []
    except OSError as e:
        raise CxrctxError(f"{path}: cannot list the report folder: {e.strerror or e}") from None
    subject = int(folder.rsplit("/p", 1)[1])
    return [
        (subject, int(name[1:-4]), f"{folder}/{name}")
        for name in sorted(names)
        if name[0] == "s" and name.endswith(".txt") and name[1:-4].isdigit()
    ]


def read_folders(args: FolderChunk) -> dict[str, list]:
    """List, read and section the reports of each patient folder of the chunk, in order.

    Listing the ~65k patient folders here, in the workers, rather than up front in the
    parent keeps the directory walk off the critical path."""
    root, folders, max_bytes = args
    cols = _empty_columns()
    with gc_paused():
        for folder, linked in folders:
            for subject, study, rel in folder_reports(root, folder):
                _add(cols, (study, subject, rel), read_file(root, rel, max_bytes, linked))
    return cols


def read_entries(args: EntryChunk) -> dict[str, list]:
    """Read and section each zip entry of the chunk, in order."""
    zip_path, entries, max_bytes = args
    cols = _empty_columns()
    with gc_paused():
        for study, subject, name in entries:
            _add(cols, (study, subject, name), read_entry(zip_path, name, max_bytes))
    return cols


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cycle collector for a chunk: reading and sectioning builds ~20
    tuples, lists and dicts per report, none in a cycle (reference counting frees them),
    yet they keep triggering collections that cost ~15 % of the chunk's time."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


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
