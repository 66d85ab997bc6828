"""Every command has help and is documented in the README."""

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cxrctx.cli import app

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
runner = CliRunner()


def _commands() -> list[str]:
    group = typer.main.get_command(app)
    return sorted(group.commands)  # type: ignore[attr-defined]


def test_there_are_commands():
    assert "schemas" in _commands()


@pytest.mark.parametrize("name", _commands())
def test_command_has_help_and_readme_entry(name):
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    group = typer.main.get_command(app)
    assert (group.commands[name].help or "").strip(), f"{name} has no help text"
    assert f"cxrctx {name}" in README, f"README does not document `cxrctx {name}`"


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert "cxrctx" in result.output


def test_schemas_check_passes():
    result = runner.invoke(app, ["schemas", "--check"])
    assert result.exit_code == 0, result.output


def test_every_command_help_has_an_example_block():
    """Each command's --help ends with a runnable `Example:` block."""
    from typer.testing import CliRunner

    from cxrctx.cli import app

    names = [c.name for c in typer_main_commands(app)]
    assert len(names) >= 14
    missing = [
        n
        for n in names
        if "Example" not in CliRunner().invoke(app, [n, "--help"], terminal_width=200).output
    ]
    assert not missing, missing


def typer_main_commands(app):
    import typer.main

    return list(typer.main.get_command(app).commands.values())
