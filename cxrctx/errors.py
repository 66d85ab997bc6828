"""User-facing errors: the CLI prints their message on one line and exits non-zero."""

from __future__ import annotations


class CxrctxError(Exception):
    """A problem with the user's input or configuration (not a bug).

    The message must name the file (and row or entry) at fault so the user can fix it.
    """

    exit_code = 2
