"""The CLI's one progress display, used by every command.

On a terminal: a rich bar per task on stderr, removed when the command ends. Off one (logs,
nohup, CI, a pipe): the library's plain tqdm lines (`cxrctx.progress.TqdmBars`), one per task
at its start and end and at most every 30 s between. Any stage's progress event is accepted
(`cxrctx.progress.step_of`), so a command passes the display as the library call's
`progress=` unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from cxrctx.cli.app import err_console
from cxrctx.progress import LOG_EVERY_S, TqdmBars, step_of


class RichBars:
    """One rich bar per task (a count, the stage's note, elapsed and remaining time)."""

    def __init__(self, command: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.command, self.t0 = command, time.monotonic()
        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=err_console, transient=True,
        )  # fmt: skip
        self.tasks: dict[str, Any] = {}
        self.bar.start()

    def __call__(self, *event: Any) -> None:
        s = step_of(*event)
        note = s.note(time.monotonic() - self.t0)
        if s.task not in self.tasks:
            desc = self.command if s.task == "phase" else f"{self.command} {s.task}"
            self.tasks[s.task] = self.bar.add_task(desc, total=s.total, note=note)
        tid = self.tasks[s.task]
        if s.done is None:
            self.bar.update(tid, advance=1, note=note)
        else:
            self.bar.update(tid, completed=s.done, total=s.total, note=note)

    def close(self) -> None:
        self.bar.stop()


@contextmanager
def progress_display(
    command: str, *, disable: bool = False, every_s: float = LOG_EVERY_S
) -> Iterator[Callable[..., None]]:
    """A `progress=` callback for one library call of `command`, closed at the end."""
    if disable:
        yield lambda *_event: None
        return
    show: RichBars | TqdmBars = (
        RichBars(command) if err_console.is_terminal else TqdmBars(command, every_s=every_s)
    )
    try:
        yield show
    finally:
        show.close()
