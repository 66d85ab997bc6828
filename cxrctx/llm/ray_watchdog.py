"""Stop the local Ray a driver started when that driver dies, even by SIGKILL.

`ray.init()` without an address starts a private Ray on this machine (gcs_server, raylet,
workers, monitors) and stops it at `ray.shutdown()` or at exit. A driver killed by SIGKILL
(an OOM kill, a scheduler's hard limit) runs neither, and those processes stay behind,
holding CPUs, memory and GPUs. So the driver starts this small watchdog right after
`ray.init()`: it waits on a pipe only the driver holds (end of file the moment the driver
dies, whatever killed it) and on the driver's pid, then terminates every process of that
Ray session — recognised by the session folder in its command line, so another Ray on the
same machine is never touched — first with SIGTERM, then SIGKILL. Linux only (it reads
/proc); elsewhere nothing is started.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 1.0
GRACE_S = 3.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def session_pids(session_dir: str, exclude: set[int]) -> list[int]:
    """Pids of the processes whose command line names `session_dir` (this Ray's own)."""
    key = os.fsencode(os.path.basename(session_dir.rstrip("/")))
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) in exclude:
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if key and key in cmd:
            pids.append(int(d.name))
    return pids


def stop_session(session_dir: str, grace_s: float = GRACE_S) -> int:
    """SIGTERM then SIGKILL every process of the session; how many were found."""
    me = {os.getpid()}
    pids = session_pids(session_dir, me)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in {*pids, *session_pids(session_dir, me)}:  # and any started meanwhile
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return len(pids)


def watch(driver_pid: int, session_dir: str) -> None:
    """Block until the driver is gone (EOF on stdin, or its pid vanished), then stop the
    session. A clean shutdown writes `done` first: nothing is left to stop then."""
    stdin = sys.stdin.buffer
    while True:
        ready, _, _ = select.select([stdin], [], [], POLL_S)
        if ready:
            line = stdin.readline()
            if line.strip() == b"done":
                return
            if not line:
                break  # EOF: the driver died
        if not _alive(driver_pid):
            break
    stop_session(session_dir)


def start(session_dir: str) -> subprocess.Popen | None:
    """Start the watchdog of this driver's local Ray (None where /proc is missing)."""
    if not Path("/proc/self/cmdline").exists() or not session_dir:
        return None
    return subprocess.Popen(
        [sys.executable, __file__, str(os.getpid()), session_dir],  # stdlib only: starts fast
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # survives a signal sent to the driver's process group
    )  # fmt: skip


def finish(proc: subprocess.Popen | None) -> None:
    """Tell the watchdog of a cleanly shut down Ray to exit."""
    if proc is None:
        return
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"done\n")
        proc.stdin.close()
        proc.wait(timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()


if __name__ == "__main__":  # pragma: no cover - run as the watchdog process
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the driver, not here
    watch(int(sys.argv[1]), sys.argv[2])
