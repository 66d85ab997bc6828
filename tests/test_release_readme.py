"""The README's release snippet runs as written and shows the row counts it produces."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from cxrctx.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text.split("\n## Releases\n", 1)[1].split("\n## ", 1)[0]


def _commands(section: str) -> list[list[str]]:
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(c) for c in block.replace("\\\n", " ").splitlines() if c.strip()]


def test_readme_release_snippet_runs_and_its_row_counts_are_real(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    cmds = _commands(_section())
    assert [c[1] for c in cmds] == [
        "build-priors", "label-lesions", "release", "validate", "info",
    ]  # fmt: skip
    for cmd in cmds:
        assert cmd[0] == "cxrctx" and "--backend" not in cmd, cmd
        res = runner.invoke(app, cmd[1:])
        assert res.exit_code == 0, (cmd, res.output)
    shown = dict(
        re.findall(r"(train|validation|test): Dataset\(\{.*?num_rows: (\d+)\}\)", _section(), re.S)
    )
    studies = tmp_path / "out/demo/release/public/data/studies"
    got = {
        split: sum(pl.read_parquet(f).height for f in studies.glob(f"{split}-*.parquet"))
        for split in ("train", "validation", "test")
    }
    assert {k: int(v) for k, v in shown.items()} == got
