"""Engine options shared by the commands that call a model."""

from __future__ import annotations

from cxrctx.errors import CxrctxError


def trainer_engine(backend: str | None, model: str | None, options: list[str] | None, what: str):
    """An LLM engine from --*-backend/--*-model/--*-opt KEY=VALUE, or None."""
    if not backend:
        return None
    from cxrctx.llm import get_engine

    pre = f"--{what}-" if what else "--"
    if not model:
        raise CxrctxError(f"{pre}backend {backend} needs {pre}model")
    opts: dict[str, object] = {}
    for o in options or []:
        key, sep, val = o.partition("=")
        if not sep:
            raise CxrctxError(f"{pre}opt {o!r}: expected KEY=VALUE")
        opts[key] = (
            int(val)
            if val.lstrip("-").isdigit()
            else float(val)
            if val.replace(".", "", 1).isdigit()
            else val
        )
    return get_engine(backend, model, **opts)
