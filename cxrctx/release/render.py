"""A bundle's card and croissant.json are a pure function of its manifest (and Parquet
schemas): `render_bundle_metadata` re-renders them, `metadata_problems` compares.

So a hand-edited card (text injected into README.md, a changed licence) shows in
`validate`, and the card can be completed only through the recorded `CardMetadata`.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from cxrctx.io import Stage
from cxrctx.models import Manifest, ShardInfo
from cxrctx.release.card import hub_card_problems, render_card
from cxrctx.release.croissant import build_croissant, croissant_problems
from cxrctx.release.meta import ReleaseConfig


def manifest_tables(m: Manifest) -> dict[str, list[ShardInfo]]:
    """Table name → its files, in the order the release wrote them (data/ then exports/)."""
    out: dict[str, list[ShardInfo]] = {}
    for s in [*m.shards, *m.tables]:
        parts = PurePosixPath(s.path).parts
        name = parts[1] if len(parts) > 2 else parts[0]
        out.setdefault(name, []).append(s)
    return out


def render_bundle_metadata(st: Stage) -> tuple[str, str]:
    """(README.md, croissant.json) of a bundle as its manifest says they must be."""

    m = st.manifest
    kind = m.stage.removeprefix("release-")
    cfg = ReleaseConfig(**m.config)
    tables = manifest_tables(m)
    summary: dict[str, Any] = m.extra.get("summary") or {}
    card = render_card(kind, tables, cfg, summary, m.extra)
    return card, build_croissant(kind, st.dir, tables, cfg)


def metadata_problems(st: Stage) -> list[str]:
    """Card and croissant.json differ from what the manifest renders; Croissant errors."""

    try:
        card, croissant = render_bundle_metadata(st)
    except (ValueError, TypeError, KeyError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        return [f"{st.dir / 'manifest.json'}: the release config or summary is not valid ({first})"]
    out = []
    for name, want in (("README.md", card), ("croissant.json", croissant)):
        f = Path(st.dir) / name
        if f.is_file() and f.read_text(encoding="utf-8") != want:
            out.append(
                f"{f}: differs from what the manifest renders (edited by hand? give card "
                "metadata to `release --card FILE` instead)"
            )
    if (Path(st.dir) / "README.md").is_file():
        out += hub_card_problems(Path(st.dir) / "README.md")
    return out + croissant_problems(st.dir, manifest_tables(st.manifest))
