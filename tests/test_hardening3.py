"""Hardening round 3: privacy routes, plans, misfiled reports, locks, caps, CLI polish.

Each test here failed before its fix (see the issue items named in the comments)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from cxrctx.cli import app
from cxrctx.errors import CxrctxError
from cxrctx.llm.spec import EngineSpec, make_engine, normalise_host, public_api_host

runner = CliRunner()
KEY = "sk-proj-Abc123DEF456ghi789JKL012mno345"


def _src(tmp_path: Path) -> Path:
    p = tmp_path / "docs.csv"
    pl.DataFrame({"id": ["d1", "d2"], "text": ["Small left effusion.", "Heart is enlarged."]}).write_csv(p)
    return p


# ------------------------------------------------------------- privacy: host normalisation


@pytest.mark.parametrize(
    "url",
    [
        "https://api.openai.com./v1",  # trailing dot (fully-qualified name)
        "https://api.openai.com../v1",
        "https://API.OpenAI.COM/v1",  # case
        "https://api.openai.com:443/v1",  # port
        "https://user:pw@api.openai.com/v1",  # userinfo
        "https://sk-x@API.OPENAI.COM.:8443/v1",  # all at once
        "https://api\uff0eopenai\uff0ecom/v1",  # full-width dots (IDNA maps them)
        "https://\uff41pi.openai.com/v1",  # full-width letter (IDNA nameprep)
        "https://api%2eopenai%2ecom/v1",  # percent-escaped dots
        "api.openai.com./v1",  # no scheme
    ],
)
def test_public_api_host_forms_are_all_refused(tmp_path, url):
    assert public_api_host(url) == "api.openai.com"
    r = runner.invoke(app, ["label-lesions", str(_src(tmp_path)), "--out", str(tmp_path / "o"),
                            "--backend", "openai", "--model", "m", "--base-url", url])  # fmt: skip
    assert r.exit_code == 2, r.output
    assert "public API" in r.output and not (tmp_path / "o").exists()


def test_normalised_host_keeps_other_hosts_apart():
    assert normalise_host("http://127.0.0.1:8000/v1") == "127.0.0.1"
    assert public_api_host("https://api.openai.com.evil.example/v1") is None
    assert public_api_host("https://x.openai.azure.com/openai/v1") is None
    assert public_api_host("https://eu.api.openai.com./v1") == "api.openai.com"  # subdomain


# ------------------------------------------------------------- privacy: --api-key-env


@pytest.mark.parametrize("value", [KEY, "sk-abc", "my key", "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123", "A1b2C3d4E5f6G7h8I9j0K1l2M3"])
def test_api_key_env_refuses_a_key_and_never_shows_it(tmp_path, value):
    out = tmp_path / "o"
    r = runner.invoke(app, ["label-lesions", str(_src(tmp_path)), "--out", str(out),
                            "--backend", "openai", "--model", "m",
                            "--base-url", "http://127.0.0.1:9/v1", "--api-key-env", value])  # fmt: skip
    assert r.exit_code == 2, r.output
    assert "--api-key-env" in r.output and value not in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not out.exists()
    with pytest.raises(CxrctxError) as e:
        EngineSpec(backend="openai", model="m", base_url="http://127.0.0.1:9/v1", api_key_env=value)
    assert value not in str(e.value)


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "MY_VLLM_KEY_2", "azure_key", "_K"])
def test_api_key_env_accepts_variable_names(name):
    spec = EngineSpec(backend="openai", model="m", base_url="http://127.0.0.1:9/v1", api_key_env=name)
    assert spec.public()["api_key_env"] == name
    assert make_engine(spec).base_url.endswith("/v1")


# ------------------------------------------------------------- CLI help: choices, examples


def _commands() -> list[str]:
    import typer

    return sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def _help(name: str | None, width: int = 80) -> str:
    args = [name, "--help"] if name else ["--help"]
    r = runner.invoke(app, args, terminal_width=width, env={"COLUMNS": str(width)})
    assert r.exit_code == 0, r.output
    return r.output


def _example_commands(name: str) -> list[str]:
    """The example commands of a command's docstring, continuation lines joined."""
    import inspect

    import typer

    doc = inspect.cleandoc(typer.main.get_command(app).commands[name].help or "")  # type: ignore[attr-defined]
    block = doc.split("Example:", 1)[1] if "Example:" in doc else ""
    cmds: list[list[str]] = []
    for line in block.splitlines():
        s = line.strip()
        if not s:
            continue
        if s.startswith("cxrctx ") or s.startswith("torchrun ") or not cmds:
            cmds.append([s])
        else:
            cmds[-1].append(s)
    return [" ".join(x.rstrip("\\").strip() for x in c) for c in cmds]


@pytest.mark.parametrize("name", _commands())
def test_help_examples_are_unbroken_at_80_columns(name):
    out = _help(name)
    lines = out.splitlines()
    assert all(len(ln) <= 80 for ln in lines), [ln for ln in lines if len(ln) > 80]
    start = next(i for i, ln in enumerate(lines) if ln.strip() == "Example:")
    shown, cur = [], ""
    for ln in lines[start + 1 :]:
        s = ln.strip()
        if not s:
            break
        cur = f"{cur} {s.rstrip(chr(92)).strip()}".strip()
        if not s.endswith("\\"):
            shown.append(cur)
            cur = ""
    # every example is shown whole, each physical line ending in `\` where it continues
    assert shown == _example_commands(name)
    assert shown and all(c.startswith(("cxrctx ", "torchrun ")) for c in shown), shown


@pytest.mark.parametrize("name", [None, *_commands()])
def test_help_lists_every_choice_and_uses_plain_placeholders(name):
    import typer

    out = _help(name, width=200)
    assert "<bool>" not in out and "<str>" not in out and "<int>" not in out
    group = typer.main.get_command(app)
    cmd = group.commands[name] if name else group  # type: ignore[attr-defined]
    n_choices = 0
    for p in cmd.params:
        desc = p.type_descriptor
        if desc.is_choice:
            values = [str(getattr(c, "value", c)) for c in desc.choices or ()]
            listing = "[" + "|".join(values) + "]"
            assert listing in out, (name, p.name, listing)
            n_choices += 1
    if name in ("build-priors", "label-lesions", "release"):
        assert n_choices >= 1


def test_help_keeps_square_brackets_of_extras():
    assert "pip install 'cxrctx[ray]'" in " ".join(_help("label-lesions", width=200).split())
    assert "[dcm|jpg]" in _help("build-priors", width=200)
