"""The Typer app, its global options and the one-line error presenter shared by all commands."""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from typer.core import TyperGroup

if TYPE_CHECKING:
    from typer._click.core import Context

from cxrctx import __version__
from cxrctx.errors import CxrctxError

_VERBOSE = {"-v", "-vv", "-vvv", "--verbose"}


class _Group(TyperGroup):
    """Accept the global `-v`/`--verbose` anywhere on the line (`cxrctx train ... -v`)."""

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        cut = args.index("--") if "--" in args else len(args)
        verbose = [a for a in args[:cut] if a in _VERBOSE]
        rest = [a for a in args[:cut] if a not in _VERBOSE] + args[cut:]
        return super().parse_args(ctx, verbose + rest)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """Each command with its whole first paragraph, wrapped (click cuts it at ~45
        characters with "...")."""
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                first = inspect.cleandoc(cmd.help or "").split("\n\n")[0]
                rows.append((name, " ".join(first.split())))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


#: click's placeholders for a value of each type (typer's own read `<str>`, `<bool>`)
_PLACEHOLDER = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "bool": "BOOLEAN"}


def _display_type(self: Any, ctx: Any) -> str:
    """The placeholder of an option's value in --help: `TEXT`, `INTEGER`, `PATH`, or the
    choices `[a|b|c]` (every enumerated option lists its choices)."""
    label = _typer_display_type(self, ctx)[1:-1]  # typer's `<label>`
    if "|" in label:
        return f"[{label.removeprefix('list[').removesuffix(']')}]"
    base = label.removeprefix("list[").removesuffix("]").removesuffix(" range")
    return _PLACEHOLDER.get(base, base.upper() if base in ("path", "file", "directory") else "TEXT")


# One help policy for every command: plain click formatting (no rich markup, which ate
# `[ray]` in `pip install 'cxrctx[ray]'`; no boxes; examples kept line for line by `\b`),
# and click's placeholders instead of typer's `<str>` / `<bool>`.
try:  # typer >= 0.2x renders `<label>`; older typer prints click's placeholders already
    from typer.core import _TyperParameter as _Param

    _typer_display_type = _Param.display_type
    _Param.display_type = _display_type  # type: ignore[method-assign]
except (ImportError, AttributeError):  # pragma: no cover - an older typer
    pass

app = typer.Typer(
    cls=_Group,
    name="cxrctx",
    help="Curate clinical-context chest X-ray report-generation datasets from MIMIC-CXR.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
class _Console(Console):
    """A rich console that wraps only on a terminal: output piped to a file keeps one line
    per message (a log is grepped, not read at 80 columns)."""

    @property  # type: ignore[override]
    def soft_wrap(self) -> bool:
        return not self.is_terminal

    @soft_wrap.setter
    def soft_wrap(self, value: bool) -> None:
        pass  # decided per call by where the output goes


console = _Console(stderr=False)
err_console = _Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        console.print(f"cxrctx {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: int = typer.Option(
        0, "--verbose", "-v", count=True, help="More log output (-v info, -vv debug)."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version."
    ),
) -> None:
    """Curate clinical-context chest X-ray report-generation datasets from MIMIC-CXR."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler: logging.Handler = (
        RichHandler(console=err_console, show_path=False)
        if err_console.is_terminal
        else logging.StreamHandler()  # a log file: plain, unwrapped lines
    )
    fmt = "%(message)s" if err_console.is_terminal else "%(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, handlers=[handler], force=True)


def fail(exc: CxrctxError) -> typer.Exit:
    """Print a user error on one line and return the Exit to raise.

    The message is escaped: paths and hints such as `pip install 'cxrctx[vllm]'` keep
    their square brackets instead of being eaten as rich markup."""
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    return typer.Exit(code=getattr(exc, "exit_code", 2))
