"""Progress of the long library calls: `progress=True` draws tqdm bars, a callable gets the
events, `None`/`False` (the default) is silent.

Data engineers script releases from Python and notebooks, so every long call (`build_priors`,
`label_lesions`, `structure_reports`, `make_release`, `rebuild`, `train`, `synthesize`,
`generate`, `evaluate`) takes `progress: bool | Callable | None`. Its front door carries `@progress_arg("name")`:
`progress=True` becomes a `TqdmBars` (a `tqdm.auto` bar per task: a widget in Jupyter, a
bar on a terminal, plain lines in a log), closed when the call returns or raises; a
callable passes through unchanged and receives the stage's own events:

- `(task, done, total)`: build_priors, generate, synthesize;
- `(phase,)`: make_release, evaluate (a phase has started);
- `(done, total, failed)`: the rules labeler's own writer;
- a `TaskProgress` (`done`, `total`, `tokens`, `failed`, ...): label_lesions, structure_reports;
- a `TrainEvent` (`kind`, `stage`, `step`, `total`, `loss`): train;
- rebuild: the events of each stage it runs.

`step_of` reads any of these as one `Step`, so one display serves every stage (the CLI's
`cxrctx.cli.progress` too). Events are read by shape, not type: this module sits below the
stages and imports none of them.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, ParamSpec, TypeVar

from tqdm.auto import tqdm
from tqdm.autonotebook import tqdm as _notebook_or_std
from tqdm.std import tqdm as _std_tqdm

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

#: off a terminal, a plain line per task at most this often (and at its first and last event)
LOG_EVERY_S = 30.0


class _Bar(tqdm):  # type: ignore[misc]
    """tqdm.auto's bar without tqdm's monitor thread (stages fork worker processes; a bar
    redraws on its own events only)."""

    monitor_interval = 0


@dataclass(frozen=True)
class Step:
    """One progress event of any stage: `done` of `total` items of `task` (total None: not
    known; done None: `phase` started), with what the stage reports besides."""

    task: str
    done: int | None
    total: int | None
    phase: str = ""
    failed: int | None = None
    tokens: int | None = None
    loss: float | None = None

    @property
    def finished(self) -> bool:
        return self.total is not None and self.done is not None and self.done >= self.total

    def note(self, elapsed_s: float) -> str:
        """What to show beside the count: phase, tokens/s, failures, loss."""
        parts = [self.phase] if self.phase else []
        if self.tokens and self.done:
            parts.append(f"{self.tokens / max(elapsed_s, 1e-9):.0f} tok/s")
        if self.failed is not None and self.done:
            parts.append(f"{self.failed} failed")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.3f}")
        return ", ".join(parts)


def step_of(*event: Any) -> Step:
    """Any stage's progress event (see the module docstring) as a Step."""
    match event:
        case (str() as phase,):
            return Step("phase", None, None, phase=phase)
        case (str() as task, int() as done, total):
            return Step(task, done, total)
        case (int() as done, total, int() as failed):
            return Step("documents", done, total, failed=failed)
        case (ev,) if hasattr(ev, "kind") and hasattr(ev, "stage"):
            return Step(f"stage {ev.stage}", ev.step, ev.total, loss=ev.loss)
        case (ev,) if hasattr(ev, "tokens") and hasattr(ev, "done"):
            return Step("documents", ev.done, ev.total, failed=ev.failed, tokens=ev.tokens,
                        phase=getattr(ev, "phase", ""))  # e.g. "writing shards"
    raise TypeError(f"not a progress event: {event!r}")


class _Lines:
    """A file for tqdm that turns its in-place redraws into plain lines (for logs): one line
    per redraw, cursor moves dropped, a repeated line written once."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream, self.last = stream, ""

    def write(self, s: str) -> None:
        for line in re.split(r"[\r\n]", s.replace("\x1b[A", "")):
            line = line.rstrip()
            if line and line != self.last:
                self.last = line
                self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


class TqdmBars:
    """A progress callback drawing one `tqdm.auto` bar per task of `label`.

    In Jupyter a widget; on a terminal an in-place bar; otherwise (a log, a pipe, a test's
    captured stderr) plain ASCII lines, at most one per `every_s` seconds per task."""

    def __init__(self, label: str, file: IO[str] | None = None, every_s: float = LOG_EVERY_S):
        self.label, self.t0 = label, time.monotonic()
        stream = file if file is not None else sys.stderr
        notebook = _notebook_or_std is not _std_tqdm
        self.kw: dict[str, Any] = (
            {"file": stream}
            if notebook or stream.isatty()
            else {"file": _Lines(stream), "mininterval": every_s, "ascii": True}
        )
        self.bars: dict[str, Any] = {}
        self.ended: set[str] = set()  # finished tasks: later events at their end draw nothing

    def __call__(self, *event: Any) -> None:
        s = step_of(*event)
        if s.finished and s.task in self.ended:
            return
        self.ended.discard(s.task)
        note = s.note(time.monotonic() - self.t0)
        bar = self.bars.get(s.task)
        count = s.done if s.done is not None else (bar.n if bar is not None else 0) + 1  # phases
        if bar is None:  # a task seen first at its end is drawn once, at close
            desc = self.label if s.task == "phase" else f"{self.label} {s.task}"
            bar = self.bars[s.task] = _Bar(
                desc=desc, total=s.total, postfix=note, initial=count,
                delay=math.inf if s.finished else 0, **self.kw,
            )  # fmt: skip
            if s.finished:
                bar.refresh()
        elif note:
            bar.set_postfix_str(note, refresh=False)
        if s.total is not None and bar.total != s.total:
            bar.total = s.total
        bar.update(count - bar.n)
        if s.finished:
            self.bars.pop(s.task).close()
            self.ended.add(s.task)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


def progress_arg(label: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Front-door decorator: `progress=True` becomes `TqdmBars(label)` for the call (closed
    when it returns or raises), `False` becomes None, a callable passes through."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        param = inspect.signature(fn).parameters.get("progress")
        if param is None or param.kind is not inspect.Parameter.KEYWORD_ONLY:
            raise TypeError(f"{fn.__qualname__}: progress must be a keyword-only parameter")

        @functools.wraps(fn)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            if kwargs.get("progress") is not True:
                if kwargs.get("progress") is False:
                    kwargs["progress"] = None
                return fn(*args, **kwargs)
            bars = TqdmBars(label)
            kwargs["progress"] = bars
            try:
                return fn(*args, **kwargs)
            finally:
                bars.close()

        call.progress_label = label  # type: ignore[attr-defined]
        return call

    return wrap


def as_callback(progress: F | bool | None) -> F | None:
    """Inside a `@progress_arg` front door: its `progress` as a callable or None (the
    decorator has replaced True already; narrows the type for the body)."""
    if isinstance(progress, bool):
        if progress:
            raise TypeError("progress=True needs the @progress_arg decorator on the front door")
        return None
    return progress
