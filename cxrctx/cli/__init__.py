"""The `cxrctx` command line: each command parses options, calls one library function, presents.

Nothing here does real work; everything is reachable from Python. One module per stage
registers its commands on the shared Typer `app`.
"""

# Registration order is the order `--help` lists the commands: the pipeline's order.
# isort: off
from cxrctx.cli import synth, mimic, labeling, evallabels, imagenome, train, reportgen, schemas  # noqa: F401
from cxrctx.cli import structure  # noqa: F401

from cxrctx.cli import release  # noqa: F401

# isort: on
from cxrctx.cli.app import app, console, err_console, fail

__all__ = ["app", "console", "err_console", "fail"]

if __name__ == "__main__":  # pragma: no cover
    app()
