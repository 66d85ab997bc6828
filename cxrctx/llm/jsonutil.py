"""Getting one JSON object out of model text: code fences, chatter before/after, duplicates."""

from __future__ import annotations

import json
import re
from typing import Any

_FENCE = re.compile(r"^\s*```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)


class DuplicateKeyError(ValueError):
    """A JSON object repeated a key (json.loads would silently keep the last one)."""


def strip_code_fences(text: str) -> str:
    """Remove one surrounding ```json ... ``` fence (models add them despite instructions)."""
    m = _FENCE.match(text)
    if m:
        return m.group(1).strip()
    # an opening fence without a closing one (truncated answer)
    s = text.strip()
    if s.startswith("```"):
        s = s.split("\n", 1)[1] if "\n" in s else s.lstrip("`")
    return s.strip()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise DuplicateKeyError(f"duplicate key {k!r}")
        out[k] = v
    return out


def extract_json(text: str) -> Any:
    """Parse the first complete JSON object in `text` (after stripping fences).

    Raises ValueError (json.JSONDecodeError or DuplicateKeyError) when there is none.
    Text around the object is ignored: small models often add a sentence after it.
    """
    s = strip_code_fences(text)
    start = s.find("{")
    if start < 0:
        raise ValueError("no JSON object in the answer")
    decoder = json.JSONDecoder(object_pairs_hook=_no_duplicates)
    obj, _end = decoder.raw_decode(s, start)
    return obj


def schema_errors(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Check `value` against the JSON Schema subset engines use (type, properties, required,
    additionalProperties, enum, maxLength, items). Returns human-readable problems."""
    errs: list[str] = []
    t = schema.get("type")
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    if t in types and not isinstance(value, types[t]):
        return [f"{path}: expected {t}"]
    if t in ("number", "integer") and (
        isinstance(value, bool) or not isinstance(value, (int, float))
    ):
        return [f"{path}: expected {t}"]
    if "enum" in schema and value not in schema["enum"]:
        errs.append(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, str) and "maxLength" in schema and len(value) > schema["maxLength"]:
        errs.append(f"{path}: longer than {schema['maxLength']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for k in schema.get("required", []):
            if k not in value:
                errs.append(f"{path}: missing {k!r}")
        for k, v in value.items():
            if k in props:
                errs.extend(schema_errors(v, props[k], f"{path}.{k}"))
            elif schema.get("additionalProperties") is False:
                errs.append(f"{path}: unexpected {k!r}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            errs.extend(schema_errors(v, schema["items"], f"{path}[{i}]"))
    return errs
