"""The output policy every stage shares (`prepare_output`), and stale temp-file cleanup.

One rule for every `--out`: a new or empty folder starts a fresh run; a folder of the same
stage and configuration (config hash) resumes; anything else is refused unless
`--overwrite`, which only ever empties a folder that a cxrctx run wrote. The folder is
checked for writability before any work, and temp files a killed run left are removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cxrctx import __version__
from cxrctx.errors import CxrctxError
from cxrctx.io import (
    MANIFEST_NAME,
    TMP_SUFFIX,
    atomic_write_text,
    config_hash,
    has_manifest,
    host_name,
    load_stage,
)
from cxrctx.locks import is_lock_file, lock_folder
from cxrctx.vocab import PREFIX

RUN_MARKER = ".cxrctx-run.json"
#: where `--plan` writes its sample inside OUT; the full run of the same stage still claims OUT
PLAN_DIR = "plan-sample"
_TMP_OWNER_RE = re.compile(r"~(?P<host>[^~]*)~(?P<pid>\d+)~[^~]*\.tmp$")


@dataclass
class OutputDir:
    """What `prepare_output` found: a fresh folder, or one to resume (same stage + config)."""

    path: Path
    resumed: bool = False
    replaced: bool = False
    stale_tmp_removed: int = 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_tmp(root: str | os.PathLike, *, stale_after_s: float = 3600.0) -> int:
    """Delete temp files a killed run left under `root`; return how many.

    A temp file of this host whose writer process is gone is removed at once; one of another
    host (shared file system) or of unknown origin only once older than `stale_after_s`, so
    a slice still running elsewhere keeps its files."""
    now, host, n = time.time(), host_name(), 0
    for f in sorted(Path(root).rglob(f".*{TMP_SUFFIX}")):
        if not f.is_file() or f.is_symlink():
            continue
        m = _TMP_OWNER_RE.search(f.name)
        try:
            if m and m["host"] == host:
                stale = not _pid_alive(int(m["pid"]))
            else:
                stale = now - f.stat().st_mtime > stale_after_s
            if stale:
                f.unlink()
                n += 1
        except OSError:
            continue
    return n


def _probe_writable(p: Path) -> None:
    try:
        fd, probe = tempfile.mkstemp(prefix=".cxrctx-write-probe.", dir=p)
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise CxrctxError(f"{p}: output folder is not writable ({e.strerror or e})") from e


def _owner(p: Path) -> tuple[str | None, str | None]:
    """(stage, config hash) of the run that wrote `p`, from its marker or manifest."""
    marker = p / RUN_MARKER
    if marker.is_file():
        try:
            data = json.loads(marker.read_text(encoding="utf-8"))
            return data.get("stage"), data.get("config_hash")
        except (OSError, ValueError):
            return "?", None
    if has_manifest(p):
        try:
            st = load_stage(p)
            return st.name, config_hash(st.manifest.config)
        except CxrctxError:
            return "?", None
    return None, None


def _not_output(x: Path, stage: str) -> bool:
    """Entries that do not make OUT someone else's: the write probe, lock files, and the
    `--plan` sample of this stage (the README promises the full run resumes in OUT)."""
    if x.name.startswith(".cxrctx-write-probe.") or is_lock_file(x.name):
        return True
    return x.name == PLAN_DIR and x.is_dir() and _owner(x)[0] == stage


def prepare_output(
    out: str | os.PathLike,
    *,
    stage: str,
    config_hash: str,
    overwrite: bool = False,
    stale_after_s: float = 3600.0,
    slot: str | None = None,
) -> OutputDir:
    """Apply the one output policy every stage shares, before any work is done.

    - `out` must be a folder we can write (checked now, not after hours of work);
    - an empty or new folder starts a fresh run;
    - a folder of the same stage and config hash resumes (its killed run's temp files are
      removed);
    - any other non-empty folder is refused unless `overwrite`, which empties it only when
      it is a cxrctx output (never an arbitrary folder).
    A marker records stage + config hash, so even a run killed before its manifest is
    recognised next time. The folder is locked for this process first (`cxrctx.locks`:
    a second run gets "in use by pid N"); slices of a sharded run lock their own `slot`."""

    p = Path(out)
    if p.exists() and not p.is_dir():
        raise CxrctxError(f"{p}: exists and is not a directory; --out needs a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CxrctxError(f"{p}: cannot create the output folder ({e.strerror or e})") from e
    _probe_writable(p)
    lock_folder(p, slot)
    res = OutputDir(p)
    entries = [x for x in p.iterdir() if not _not_output(x, stage)]
    if entries:
        owner_stage, owner_hash = _owner(p)
        same = owner_stage == stage and owner_hash == config_hash
        if same:
            res.resumed = True
        elif not overwrite:
            what = (
                f"the output of another {owner_stage} run (different configuration)"
                if owner_stage == stage
                else f"a {owner_stage} output"
                if owner_stage not in (None, "?")
                else "files that are not a cxrctx output"
            )
            raise CxrctxError(
                f"{p}: not empty: holds {what}; pass --overwrite to replace it, or choose a new folder"
            )
        elif owner_stage is None:
            raise CxrctxError(
                f"{p}: not empty and not a cxrctx output (no {MANIFEST_NAME} or {RUN_MARKER}); "
                "--overwrite only replaces cxrctx outputs: choose a new or empty folder"
            )
        else:
            _empty_folder(p)
            res.replaced = True
    res.stale_tmp_removed = remove_stale_tmp(p, stale_after_s=stale_after_s)
    marker = {"stage": stage, "config_hash": config_hash, "tool_version": __version__}
    try:
        atomic_write_text(p / RUN_MARKER, json.dumps(marker, sort_keys=True) + "\n")
    except OSError as e:
        raise CxrctxError(f"{p}: output folder is not writable ({e.strerror or e})") from e
    return res


def _empty_folder(p: Path) -> None:
    try:
        for x in p.iterdir():
            if is_lock_file(x.name):
                continue  # ours: held until this run ends
            if x.is_dir() and not x.is_symlink():
                shutil.rmtree(x)
            else:
                x.unlink()
    except OSError as e:
        raise CxrctxError(f"{p}: cannot clear the old output ({e.strerror or e})") from e


def _is_mimic_root(d: Path) -> bool:
    """A MIMIC-CXR (or -JPG) download: its CSVs, its reports zip or its files/pNN tree."""
    names = [f"{PREFIX}{s}.csv{z}" for s in ("metadata", "split", "chexpert") for z in (".gz", "")]
    return any((d / n).is_file() for n in (*names, "mimic-cxr-reports.zip")) or any(
        (d / "files").glob("p1[0-9]")
    )


def no_manifest_error(d: Path, expect: tuple[str, ...] = ()) -> CxrctxError:
    """The one-line error for a folder given as a stage output that has no manifest: what
    the folder is, and which command makes the folder that was expected."""
    then = ""
    if not d.is_dir() or not any(d.iterdir()):
        what = "an empty folder"
    elif _is_mimic_root(d):
        what = "a raw MIMIC-CXR root, not a stage output"
    else:
        what = "an interrupted or unfinished run"
        stage = _owner(d)[0] if (d / RUN_MARKER).is_file() else None
        if stage not in (None, "?"):
            then = f" of {stage}: re-run the same {stage} command to finish it"
    need = (
        f"; a {' or '.join(expect)} output folder is made by "
        + " or ".join(f"`cxrctx {e} ... --out DIR`" for e in expect)
        if expect
        else "; a stage output is complete only once its manifest is written"
    )
    return CxrctxError(f"{d}: no {MANIFEST_NAME} ({what}){then}{need}")
