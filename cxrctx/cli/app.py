"""The Typer app, its global options and the one-line error presenter shared by all commands."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

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


app = typer.Typer(
    cls=_Group,
    name="cxrctx",
    help="Curate clinical-context chest X-ray report-generation datasets from MIMIC-CXR.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=False)
err_console = Console(stderr=True)


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
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
        force=True,
    )


def fail(exc: CxrctxError) -> typer.Exit:
    """Print a user error on one line and return the Exit to raise.

    The message is escaped: paths and hints such as `pip install 'cxrctx[vllm]'` keep
    their square brackets instead of being eaten as rich markup."""
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    return typer.Exit(code=getattr(exc, "exit_code", 2))
