"""One writer per output folder: the lock every stage takes when it claims its `--out`.

Two runs writing one folder corrupt each other (the second removes the first's live temp
files, both send the same requests). The first run to claim a folder holds
`OUT/.cxrctx-lock` until its process exits; a second run gets a one-line
"in use by pid N" error. The lock is an OS file lock (`flock`), so the kernel drops it
when its holder dies, even by SIGKILL: a lock file a dead run left is simply taken over.
Where the file system refuses `flock`, the pid recorded in the file decides (a dead pid on
this host is stale). Slices of a `--shard i/n` run, which share one folder by design,
each lock their own slot.

The lock is held until the process exits: the CLI runs one command per process. A library
caller that runs many stages in one long-lived process may hand folders back early with
`release_folder(out)` or `release_all()`.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path

from cxrctx.errors import CxrctxError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the pid in the file decides
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".cxrctx-lock"
#: lock files this process holds: path -> open descriptor (holding it keeps the lock)
_HELD: dict[Path, int] = {}


def is_lock_file(name: str) -> bool:
    """Whether a folder entry is a lock file (never output, never emptied by --overwrite)."""
    return name == LOCK_NAME or name.startswith(LOCK_NAME + ".")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(fd: int) -> dict:
    """What the holder wrote into the lock file ({} when unreadable or empty)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 4096).decode("utf-8") or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _flock(fd: int) -> bool | None:
    """True: locked; False: another process holds it; None: no flock on this file system."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        return None  # ENOLCK, EINVAL, ENOTSUP: fall back to the recorded pid


def _in_use(folder: Path, holder: dict) -> CxrctxError:
    pid, host = holder.get("pid", "?"), holder.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return CxrctxError(
        f"{folder}: in use by pid {pid}{where} (another cxrctx run is writing there); "
        "wait for it to finish or choose another --out"
    )


def _prune() -> None:
    """Close the locks of folders that no longer exist (a long test session makes many)."""
    for path in [p for p in _HELD if not p.parent.is_dir()]:
        try:
            os.close(_HELD.pop(path))
        except OSError:
            pass


def lock_folder(folder: str | os.PathLike, slot: str | None = None) -> Path:
    """Take the write lock of `folder` (of one `slot`, e.g. a shard) for this process.

    Re-entrant within a process. Raises a one-line CxrctxError naming the holder's pid when
    another live process holds it."""
    d = Path(folder)
    path = d.resolve() / (LOCK_NAME if slot is None else f"{LOCK_NAME}.{slot}")
    if path in _HELD:
        return path
    _prune()
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise CxrctxError(f"{d}: cannot create the lock file ({e.strerror or e})") from e
    got = _flock(fd)
    holder = _holder(fd)
    other = holder.get("pid") != os.getpid() or holder.get("host") != socket.gethostname()
    if got is False or (
        got is None and other and holder.get("host") in (None, socket.gethostname())
        and isinstance(holder.get("pid"), int) and _pid_alive(holder["pid"])
    ):  # fmt: skip
        os.close(fd)
        raise _in_use(d, holder)
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "since": round(time.time(), 3)}
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(mine) + "\n").encode("utf-8"))
    except OSError as e:
        os.close(fd)
        raise CxrctxError(f"{d}: cannot write the lock file ({e.strerror or e})") from e
    _HELD[path] = fd
    return path


def release_folder(folder: str | os.PathLike, slot: str | None = None) -> None:
    """Hand a folder this process locked back early (the lock file stays, unlocked)."""
    path = Path(folder).resolve() / (LOCK_NAME if slot is None else f"{LOCK_NAME}.{slot}")
    fd = _HELD.pop(path, None)
    if fd is not None:
        os.close(fd)


def release_all() -> None:
    """Hand back every folder this process locked (a test session, a notebook between runs)."""
    for path in list(_HELD):
        try:
            os.close(_HELD.pop(path))
        except OSError:
            pass
