"""Hardening round 3: privacy routes, plans, misfiled reports, locks, caps, CLI polish.

Each test here failed before its fix (see the issue items named in the comments)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from cxrctx.cli import app
from cxrctx.errors import CxrctxError
from cxrctx.llm.spec import EngineSpec, make_engine, public_api_host

runner = CliRunner()
KEY = "sk-proj-Abc123DEF456ghi789JKL012mno345"


def _src(tmp_path: Path) -> Path:
    p = tmp_path / "docs.csv"
    pl.DataFrame(
        {"id": ["d1", "d2"], "text": ["Small left effusion.", "Heart is enlarged."]}
    ).write_csv(p)
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
    r = runner.invoke(
        app,
        [
            "label-lesions",
            str(_src(tmp_path)),
            "--out",
            str(tmp_path / "o"),
            "--backend",
            "openai",
            "--model",
            "m",
            "--base-url",
            url,
        ],
    )
    assert r.exit_code == 2, r.output
    assert "public API" in r.output and not (tmp_path / "o").exists()


def test_normalised_host_keeps_other_hosts_apart():
    from cxrctx.llm.spec import normalise_host

    assert normalise_host("http://127.0.0.1:8000/v1") == "127.0.0.1"
    assert public_api_host("https://api.openai.com.evil.example/v1") is None
    assert public_api_host("https://x.openai.azure.com/openai/v1") is None
    assert public_api_host("https://eu.api.openai.com./v1") == "api.openai.com"  # subdomain


# ------------------------------------------------------------- privacy: --api-key-env


@pytest.mark.parametrize(
    "value",
    [KEY, "sk-abc", "my key", "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123", "A1b2C3d4E5f6G7h8I9j0K1l2M3"],
)
def test_api_key_env_refuses_a_key_and_never_shows_it(tmp_path, value):
    out = tmp_path / "o"
    r = runner.invoke(
        app,
        [
            "label-lesions",
            str(_src(tmp_path)),
            "--out",
            str(out),
            "--backend",
            "openai",
            "--model",
            "m",
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--api-key-env",
            value,
        ],
    )
    assert r.exit_code == 2, r.output
    assert "--api-key-env" in r.output and value not in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not out.exists()
    with pytest.raises(CxrctxError) as e:
        EngineSpec(backend="openai", model="m", base_url="http://127.0.0.1:9/v1", api_key_env=value)
    assert value not in str(e.value)


@pytest.mark.parametrize(
    "name",
    [
        "OPENAI_API_KEY",
        "MY_VLLM_KEY_2",
        "azure_key",
        "_K",
        "api_key_for_my_service_123",
        "MyServiceApiKeyForProd2024",
        "AZURE_OPENAI_API_KEY_2024_EU",
    ],
)
def test_api_key_env_accepts_variable_names(name):
    spec = EngineSpec(
        backend="openai", model="m", base_url="http://127.0.0.1:9/v1", api_key_env=name
    )
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


# ------------------------------------------------------------- --plan: failed sample, resume


def _plan_corpus(path: Path) -> Path:
    from _llm_helpers import TEXTS

    ids = [f"{k}-{c}" for c in range(4) for k in TEXTS]
    texts = [t for _ in range(4) for t in TEXTS.values()]
    pl.DataFrame({"id": ids, "text": texts}).write_parquet(path)
    return path


def _llm_args(src: Path, out: Path, *extra: str) -> list[str]:
    return [
        "label-lesions",
        str(src),
        "--out",
        str(out),
        "--backend",
        "openai",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--model",
        "m",
        "--mode",
        "llm",
        *extra,
    ]


def _use_engine(monkeypatch, responder) -> None:
    from cxrctx.llm.fake import FakeEngine

    monkeypatch.setattr(
        "cxrctx.labeling.stage.make_engine",
        lambda spec: FakeEngine(spec.model, responder=responder),
    )


def test_a_plan_from_a_failed_sample_is_an_error_naming_how_many_failed(tmp_path, monkeypatch):
    _use_engine(monkeypatch, lambda req: "not json at all")
    src = _plan_corpus(tmp_path / "docs.parquet")
    r = runner.invoke(app, _llm_args(src, tmp_path / "o", "--plan", "--plan-sample", "6"))
    assert r.exit_code != 0, r.output
    assert "sample documents failed" in r.output and "GPU-hours" not in r.output
    import re

    m = re.search(r"(\d+) of (\d+) sample documents failed", r.output)
    assert m is not None and int(m.group(1)) >= 1 and int(m.group(2)) == 6, r.output
    assert not (tmp_path / "o" / "plan-sample" / "plan.json").exists()


def test_check_sample_refuses_an_empty_or_failed_sample():
    from cxrctx.llm.plan import check_sample

    check_sample(10, 0, "x")  # a clean sample passes
    with pytest.raises(CxrctxError, match="3 of 10 sample documents failed"):
        check_sample(10, 3, "x")
    with pytest.raises(CxrctxError, match="holds no documents"):
        check_sample(0, 0, "x")


@pytest.mark.parametrize("overwrite", [False, True])
def test_after_plan_the_full_run_resumes_in_the_same_out(tmp_path, monkeypatch, overwrite):
    from _llm_helpers import good_answer

    _use_engine(monkeypatch, good_answer)
    src = _plan_corpus(tmp_path / "docs.parquet")
    out = tmp_path / "o"
    r = runner.invoke(app, _llm_args(src, out, "--plan", "--plan-sample", "6"))
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, _llm_args(src, out, *(["--overwrite"] if overwrite else [])))
    assert r.exit_code == 0, r.output
    assert (out / "manifest.json").is_file() and (out / "plan-sample" / "plan.json").is_file()
    from cxrctx.io import read_shards

    assert read_shards(out / "documents").height == 24


# ------------------------------------------------------------- one writer per output folder

HOLD = """
import sys, time
from cxrctx.locks import lock_folder
lock_folder(sys.argv[1], None if sys.argv[2] == "-" else sys.argv[2])
print("locked", flush=True)
time.sleep(120)
"""


def _holder(folder: Path, slot: str = "-"):
    import os
    import subprocess
    import sys

    folder.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")]
        ),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder), slot], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def _rules(src: Path, out: Path, *extra: str):
    return runner.invoke(app, ["label-lesions", str(src), "--out", str(out), *extra])


def test_a_second_run_on_a_locked_folder_stops_with_the_holders_pid(tmp_path):
    src, out = _src(tmp_path), tmp_path / "o"
    proc = _holder(out)
    try:
        r = _rules(src, out)
        assert r.exit_code == 2, r.output
        assert f"in use by pid {proc.pid}" in r.output
        assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
        assert not (out / "manifest.json").exists()
    finally:
        proc.kill()
        proc.wait()
    # the holder died (SIGKILL): its lock file stays, and is taken over
    assert (out / ".cxrctx-lock").is_file()
    r = _rules(src, out)
    assert r.exit_code == 0, r.output
    assert (out / "manifest.json").is_file()


def test_every_stage_claims_its_folder_through_the_lock(tmp_path, synth_root_small):
    out = tmp_path / "priors"
    proc = _holder(out)
    try:
        r = runner.invoke(app, ["build-priors", str(synth_root_small), "--out", str(out)])
        assert r.exit_code == 2 and f"in use by pid {proc.pid}" in r.output, r.output
        from cxrctx.output_policy import prepare_output

        with pytest.raises(CxrctxError, match=f"in use by pid {proc.pid}"):
            prepare_output(out, stage="anything", config_hash="x")
    finally:
        proc.kill()
        proc.wait()


def test_slices_of_a_sharded_run_lock_their_own_slot(tmp_path):
    src, out = _src(tmp_path), tmp_path / "o"
    proc = _holder(out, "shard-0-of-2")
    try:
        assert _rules(src, out, "--shard", "1/2").exit_code == 0  # another slice: allowed
        r = _rules(src, out, "--shard", "0/2")
        assert r.exit_code == 2 and f"in use by pid {proc.pid}" in r.output, r.output
    finally:
        proc.kill()
        proc.wait()


def test_without_flock_the_recorded_pid_decides(tmp_path, monkeypatch):
    import json
    import os
    import socket
    import subprocess
    import sys

    from cxrctx import locks

    monkeypatch.setattr(locks, "_flock", lambda fd: None)  # a file system without flock
    d = tmp_path / "d"
    d.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (d / locks.LOCK_NAME).write_text(
            json.dumps({"pid": live.pid, "host": socket.gethostname()})
        )
        with pytest.raises(CxrctxError, match=f"in use by pid {live.pid}"):
            locks.lock_folder(d)
    finally:
        live.kill()
        live.wait()
    locks.lock_folder(d)  # the recorded pid is dead now: taken over
    assert json.loads((d / locks.LOCK_NAME).read_text())["pid"] == os.getpid()
    locks.release_folder(d)


# ------------------------------------------------------------- size cap of table inputs


def _big_src(tmp_path: Path, big_bytes: int) -> Path:
    p = tmp_path / "docs.csv"
    big = "Small left pleural effusion. " * (big_bytes // 29 + 1)
    pl.DataFrame(
        {"id": ["a", "big", "c"], "text": ["Heart is enlarged.", big, "Lungs are clear."]}
    ).write_csv(p)
    return p


def test_rules_reject_an_oversize_text_row_by_row(tmp_path):
    from cxrctx.io import load_stage, read_shards

    src, out = _big_src(tmp_path, 5000), tmp_path / "o"
    r = _rules(src, out, "--max-report-bytes", "1000")
    assert r.exit_code == 0, r.output
    assert "1 too large" in r.output
    fails = read_shards(out / "failures")
    row = fails.filter(pl.col("id") == "big").row(0, named=True)
    assert row["reason"].startswith("report_too_large: larger than 1,000 bytes")
    docs = read_shards(out / "documents")
    assert docs.filter(pl.col("id") == "big")["status"].to_list() == ["too_large"]
    assert docs.height == 3 and "big" not in read_shards(out / "labels")["id"].to_list()
    counts = load_stage(out).manifest.counts
    assert counts["too_large"] == 1 and counts["documents"] == 3


def test_an_oversize_text_is_never_sent_to_the_model(tmp_path, monkeypatch):
    from _llm_helpers import good_answer

    sent: list[int] = []

    def answer(req):
        sent.append(sum(len(m["content"]) for m in req.messages))
        return good_answer(req)

    _use_engine(monkeypatch, answer)
    src, out = _big_src(tmp_path, 20_000), tmp_path / "o"
    r = runner.invoke(app, _llm_args(src, out, "--max-report-bytes", "10000"))
    assert r.exit_code == 0, r.output
    assert sent and max(sent) < 10_000
    from cxrctx.io import read_shards

    assert read_shards(out / "documents").filter(pl.col("status") == "too_large")[
        "id"
    ].to_list() == ["big"]


# ------------------------------------------------------------- build-priors: misfiled, sizes


def _copy_root(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _build(root: Path, out: Path, **kw):
    from cxrctx.io import read_shards
    from cxrctx.mimic.build import build_priors

    build_priors(root, out, workers=1, **kw)
    return read_shards(out / "records"), pl.read_parquet(out / "rejects.parquet")


def test_a_misfiled_copy_under_an_earlier_patient_does_not_hide_the_real_report(
    synth_root_small, tmp_path
):
    import shutil

    root = _copy_root(synth_root_small, tmp_path / "mimic")
    folders = sorted((root / "files").glob("p1*/p*"))
    first, last = folders[0], folders[-1]
    real = sorted(last.glob("s*.txt"))[0]
    copy = first / real.name  # sorts before the real one: the old reader kept it
    shutil.copyfile(real, copy)
    sid = int(real.stem[1:])
    base_rec, base_rej = _build(synth_root_small, tmp_path / "base")
    rec, rej = _build(root, tmp_path / "out")
    assert sid in rec["study_id"].to_list()
    assert rec.equals(base_rec)  # the study reads its own report: records unchanged
    extra = rej.join(base_rej, on=rej.columns, how="anti")
    assert extra.height == 1
    row = extra.row(0, named=True)
    assert row["study_id"] == sid and row["reason"] == "misfiled_report"
    assert str(copy.relative_to(root)) in row["source"] and "filed under patient" in row["source"]


def test_a_misfiled_zip_entry_first_in_the_zip_does_not_hide_the_real_one(tmp_path):
    import zipfile

    from cxrctx.synth import synthesize

    root = tmp_path / "mimic"
    synthesize(root, patients=4, seed=5, zip_reports=True)
    zpath = root / "mimic-cxr-reports.zip"
    with zipfile.ZipFile(zpath) as zf:
        entries = [(i.filename, zf.read(i)) for i in zf.infolist() if not i.is_dir()]
    reports = sorted(n for n, _ in entries if n.endswith(".txt"))
    real_name = reports[-1]
    first_patient = "/".join(reports[0].split("/")[:-1])
    misfiled = f"{first_patient}/{real_name.rsplit('/', 1)[1]}"
    base_rec, _ = _build(root, tmp_path / "base", reports_zip=zpath)
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr(misfiled, dict(entries)[real_name])  # first in the central directory
        for n, data in entries:
            zf.writestr(n, data)
    rec, rej = _build(root, tmp_path / "out", reports_zip=zpath)
    assert rec.equals(base_rec)
    mis = rej.filter(pl.col("reason") == "misfiled_report")
    assert mis.height == 1 and misfiled in mis["source"][0]


def test_non_positive_rows_or_columns_reject_the_image_with_a_reason(synth_root_small, tmp_path):
    import csv
    import gzip
    import io

    root = _copy_root(synth_root_small, tmp_path / "mimic")
    meta = root / "mimic-cxr-2.0.0-metadata.csv.gz"
    rows = list(csv.reader(io.StringIO(gzip.decompress(meta.read_bytes()).decode())))
    head = rows[0]
    r_i, c_i, d_i = head.index("Rows"), head.index("Columns"), head.index("dicom_id")
    rows[1][r_i] = "-5"
    rows[2][c_i] = "0"
    bad = {rows[1][d_i], rows[2][d_i]}
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    meta.write_bytes(gzip.compress(buf.getvalue().encode()))
    rec, rej = _build(root, tmp_path / "out")
    sizes = rej.filter(pl.col("reason") == "bad_image_size").sort("source")
    assert sizes.height == 2
    assert "line 2: Rows=-5" in sizes["source"][0] and "line 3: " in sizes["source"][1]
    assert "Columns=0" in sizes["source"][1]
    kept = {im["dicom_id"] for ims in rec["images"].to_list() for im in ims}
    assert not (bad & kept)


# ------------------------------------------------------------- one vocabulary, plain output


@pytest.fixture(scope="module")
def priors(tmp_path_factory, synth_root_small):
    from cxrctx.mimic.build import build_priors

    out = tmp_path_factory.mktemp("h3") / "priors"
    build_priors(synth_root_small, out, workers=1)
    return out


def test_release_target_lists_sections_comma_separated_like_every_command(priors, tmp_path):
    import json

    args = ["release", "--records", str(priors), "--name", "me/x", "--version", "1.0.0"]
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "r"), "--target", "findings,impression"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "r" / "public" / "manifest.json").read_text())["config"]
    assert cfg["target"] == "findings+impression"
    r = runner.invoke(
        app, [*args, "--out", str(tmp_path / "r2"), "--target", "findings+impression"]
    )
    assert r.exit_code == 2 and "findings,impression" in r.output


def test_eval_labels_json_is_a_flag_as_in_validate_and_info(synth_root_small, tmp_path):
    import json

    truth = str(synth_root_small / "truth")
    r = runner.invoke(app, ["eval-labels", truth, "--against", truth, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["location_accuracy"] == 1.0
    js = tmp_path / "r.json"
    r = runner.invoke(app, ["eval-labels", truth, "--against", truth, "--json-out", str(js)])
    assert r.exit_code == 0 and json.loads(js.read_text())["location_accuracy"] == 1.0


def test_output_piped_to_a_file_is_not_wrapped(tmp_path):
    r = _rules(_src(tmp_path), tmp_path / "o")  # CliRunner's stdout is not a terminal
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if "label-lesions (rules)" in ln)
    assert len(line) > 80 and line.rstrip().endswith("s")  # the whole summary, one line
    assert "missing/duplicate ids in" in line


def test_rules_report_the_phase_while_shards_are_written(tmp_path):
    from cxrctx.labeling import label_lesions

    phases: list[str] = []
    label_lesions(_src(tmp_path), tmp_path / "o", progress=lambda p: phases.append(p.phase))
    shown = [p for p in phases if p]
    assert shown[:2] == ["writing shards", "labeling"]


def test_a_raw_mimic_root_given_as_a_stage_folder_says_what_it_is(synth_root_small, tmp_path):
    r = _rules(synth_root_small, tmp_path / "o")
    assert r.exit_code == 2, r.output
    assert "a raw MIMIC-CXR root" in r.output and "interrupted" not in r.output
    assert "`cxrctx build-priors ... --out DIR`" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_an_interrupted_stage_folder_names_its_stage(priors, tmp_path):
    import shutil

    broken = tmp_path / "records"
    shutil.copytree(priors, broken)
    (broken / "manifest.json").unlink()
    r = _rules(broken, tmp_path / "o")
    assert r.exit_code == 2
    assert "(an interrupted or unfinished run) of build-priors" in r.output


# ------------------------------------------------------------- a killed Ray driver

RAY_DRIVER = """
import time
import ray
from cxrctx.llm.ray_executor import RayExecutor, _session_dir
ex = RayExecutor(1, num_cpus=1)
ex.start()
print(_session_dir(ray), flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_a_sigkilled_driver_takes_the_local_ray_it_started_down(tmp_path):
    """SIGKILL skips ray.shutdown(): nothing of that Ray session may stay behind. (On Linux
    with Ray 2.60 Ray's own kernel fate-sharing already stops gcs_server and raylet; the
    watchdog is what stops them where that does not hold: its mechanism is tested without
    Ray below.)"""
    import os
    import signal
    import subprocess
    import sys
    import time

    pytest.importorskip("ray")
    from cxrctx.llm.ray_watchdog import session_pids

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")]
        ),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", RAY_DRIVER],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        session = proc.stdout.readline().strip()
        assert session, "the driver did not start Ray"
        ray_pids = session_pids(session, {proc.pid})
        assert len(ray_pids) >= 2, ray_pids  # at least gcs_server and raylet
        os.kill(proc.pid, signal.SIGKILL)  # the driver alone, as an OOM killer would
        proc.wait(timeout=10)
        deadline = time.monotonic() + 30
        while session_pids(session, set()) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = session_pids(session, set())
    finally:
        if proc.poll() is None:
            proc.kill()
    if left:  # clean up for the next test before failing
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    assert not left, f"Ray processes left running: {left}"


def test_the_watchdog_stops_only_its_session_when_the_driver_dies(tmp_path):
    """The mechanism without Ray: 'session' processes name the session folder in their
    command line; another session's process is left alone."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from cxrctx.llm import ray_watchdog

    sleep = "import sys, time; time.sleep(120)"
    mine = str(tmp_path / "session_2026-01-01_00-00-00_000001_1")
    other = str(tmp_path / "session_2026-01-01_00-00-00_000002_2")
    driver = subprocess.Popen([sys.executable, "-c", sleep])
    ours = subprocess.Popen([sys.executable, "-c", sleep, f"--session-dir={mine}"])
    theirs = subprocess.Popen([sys.executable, "-c", sleep, f"--session-dir={other}"])
    dog = subprocess.Popen(
        [sys.executable, ray_watchdog.__file__, str(driver.pid), mine],
        stdin=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        time.sleep(1.0)
        assert ours.poll() is None and dog.poll() is None
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        dog.wait(timeout=20)
        assert ours.wait(timeout=10) in (-signal.SIGTERM, -signal.SIGKILL)
        assert theirs.poll() is None  # another session: untouched
    finally:
        for p in (driver, ours, theirs, dog):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_a_clean_shutdown_tells_the_watchdog_to_leave(tmp_path):
    import subprocess
    import sys

    from cxrctx.llm import ray_watchdog

    mine = str(tmp_path / "session_x")
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", mine])
    try:
        dog = ray_watchdog.start(mine)
        assert dog is not None
        ray_watchdog.finish(dog)
        assert dog.returncode == 0 and ours.poll() is None  # nothing stopped
    finally:
        ours.kill()
        ours.wait()


def test_the_command_list_shows_each_summary_whole():
    out = " ".join(_help(None).split("Commands:", 1)[1].split())
    assert "..." not in out
    assert "keep only answers that pass the faithfulness check." in out


def test_the_progress_display_shows_a_documents_phase():
    from cxrctx.llm.runner import TaskProgress
    from cxrctx.progress import step_of

    s = step_of(TaskProgress(5, 10, 0, 0, 0, 0, phase="writing shards"))
    assert s.phase == "writing shards" and s.note(1.0).startswith("writing shards")
