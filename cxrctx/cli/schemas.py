"""`cxrctx schemas`: regenerate or check the JSON Schemas."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrctx import schema_export
from cxrctx.cli.app import app, console, err_console


@app.command("schemas")
def schemas_cmd(
    out_dir: Path = typer.Option(
        None, "--out", help="Directory to write into (default: the repo's schemas/)."
    ),
    check: bool = typer.Option(
        False, "--check", help="Only check; exit 1 when a schema file is stale."
    ),
) -> None:
    """Regenerate the JSON Schemas in schemas/ from the pydantic models.

    \b
    Example:
      cxrctx schemas            # rewrite schemas/ in a source checkout
      cxrctx schemas --check    # exit 1 when a schema file is stale (CI)
    """
    target = out_dir or schema_export.schemas_dir()
    if check:
        bad = schema_export.stale(target)
        if bad:
            err_console.print(f"stale schemas: {', '.join(bad)} (run `cxrctx schemas`)")
            raise typer.Exit(1)
        console.print("schemas are current")
        return
    for path in schema_export.write_all(target):
        console.print(str(path))
