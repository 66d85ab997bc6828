"""Progress in the Python API (`progress=True` draws tqdm bars on stderr, a callable gets
the stage's events, the default is silent) and the CLI's one display."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from cxrctx import jsonl
from cxrctx.labeling import label_lesions
from cxrctx.llm.fake import FakeEngine
from cxrctx.llm.runner import TaskProgress
from cxrctx.mimic.build import build_priors
from cxrctx.progress import Step, TqdmBars, as_callback, progress_arg, step_of
from cxrctx.release import make_release, rebuild
from cxrctx.structure.run import structure_reports
from cxrctx.train.events import TrainEvent
from cxrctx.train.run import train

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mimic-mini"


def test_every_long_call_takes_progress_true():
    """Each front door carries @progress_arg (the calls below exercise what it does)."""
    from cxrctx.reportgen.evaluate import evaluate
    from cxrctx.reportgen.generate import generate
    from cxrctx.synth import synthesize

    for fn in (
        build_priors,
        label_lesions,
        structure_reports,
        make_release,
        rebuild,
        train,
        generate,
        evaluate,
        synthesize,
    ):
        assert getattr(fn, "progress_label", None), fn.__name__


def test_progress_true_draws_bars_on_stderr_through_the_pipeline(tmp_path, capsys):
    """build-priors → rules labels → release → rebuild, each with progress=True: plain
    tqdm lines off a terminal, ending at 100%; nothing on stdout."""
    build_priors(EXAMPLE, tmp_path / "r", workers=1, progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "build-priors report folders: 100%|##########| 25/25 " in err
    label_lesions(tmp_path / "r", tmp_path / "l", labeler="rules", progress=True)
    err = capsys.readouterr().err
    assert "label-lesions documents: 100%|##########| 77/77 " in err and "0 failed" in err
    make_release(
        tmp_path / "r",
        labels=tmp_path / "l",
        out=tmp_path / "rel",
        name="a/b",
        version="1.0.0",
        progress=True,
    )
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("release: 2it ") and "bundles written" in err
    rep = rebuild(tmp_path / "rel", EXAMPLE, out=tmp_path / "rb", progress=True)
    err = capsys.readouterr().err
    assert rep.identical and "rebuild report folders: 100%" in err
    assert "rebuild documents: 100%" in err and "bundles written" in err


def test_a_callback_still_gets_the_events_and_the_default_is_silent(tmp_path, capsys):
    events: list[tuple] = []
    build_priors(EXAMPLE, tmp_path / "a", workers=1, progress=lambda *e: events.append(e))
    assert events[0] == ("report folders", 0, 25) and events[-1] == ("report folders", 25, 25)
    build_priors(EXAMPLE, tmp_path / "b", workers=1)
    build_priors(EXAMPLE, tmp_path / "c", workers=1, progress=False)
    assert capsys.readouterr() == ("", "")


def _reports(tmp_path: Path) -> Path:
    src = tmp_path / "r.jsonl"
    rows = [{"id": str(i), "findings": "No effusion.", "impression": "Normal."} for i in range(5)]
    jsonl.write(src, rows)
    return src


def test_llm_stages_show_documents_and_tokens(tmp_path, capsys):
    src = _reports(tmp_path)
    seen: list[TaskProgress] = []
    structure_reports(src, tmp_path / "s", engine=FakeEngine("m"), progress=seen.append)
    assert seen[-1].done == 5 and seen[-1].total == 5
    assert capsys.readouterr().err == ""
    structure_reports(src, tmp_path / "s2", engine=FakeEngine("m"), progress=True)
    err = capsys.readouterr().err
    assert "structure-reports documents: 100%|##########| 5/5 " in err and "tok/s" in err
    docs = tmp_path / "d.jsonl"
    jsonl.write(docs, [{"id": "1", "text": "Small left pleural effusion."}])
    label_lesions(docs, tmp_path / "l", engine=FakeEngine("m"), progress=True)
    assert "label-lesions documents: 100%|##########| 1/1 " in capsys.readouterr().err


def test_step_of_reads_every_stage_event():
    assert step_of("report folders", 3, 9) == Step("report folders", 3, 9)
    assert step_of("bundles written") == Step("phase", None, None, phase="bundles written")
    assert step_of(4, 10, 1) == Step("documents", 4, 10, failed=1)
    tp = TaskProgress(done=2, total=None, requests=3, tokens=40, cached=0, failed=0)
    assert step_of(tp) == Step("documents", 2, None, failed=0, tokens=40)
    ev = TrainEvent("step", stage=2, step=5, total=8, loss=0.5)
    assert step_of(ev) == Step("stage 2", 5, 8, loss=0.5)
    assert Step("documents", 4, 10, failed=1, tokens=80).note(2.0) == "40 tok/s, 1 failed"
    with pytest.raises(TypeError, match="not a progress event"):
        step_of(1.5)


def test_plain_lines_are_throttled_and_each_task_ends_with_its_last_count():
    buf = io.StringIO()
    bars = TqdmBars("train", file=buf, every_s=3600)
    bars(TrainEvent("stage_start", stage=1, step=0, total=8))
    for step in range(1, 9):
        bars(TrainEvent("step", stage=1, step=step, total=8, loss=1.0 / step))
    bars(TrainEvent("stage_end", stage=1, step=8, total=8))  # already drawn at 8/8
    bars(TrainEvent("stage_start", stage=2, step=0, total=4))
    bars.close()
    lines = buf.getvalue().splitlines()
    assert [ln.split("|")[0] for ln in lines] == [
        "train stage 1:   0%",
        "train stage 1: 100%",
        "train stage 2:   0%",
    ]
    assert "8/8" in lines[1] and "loss 0.125" in lines[1] and "\r" not in buf.getvalue()


def test_a_task_first_seen_at_its_end_is_one_line():
    buf = io.StringIO()
    bars = TqdmBars("synth", file=buf)
    bars("done", 1, 1)
    bars.close()
    assert buf.getvalue().splitlines() == ["synth done: 100%|##########| 1/1 [00:00<?, ?it/s]"]


def test_the_decorator_needs_a_keyword_only_progress_and_as_callback_narrows():
    with pytest.raises(TypeError, match="keyword-only"):

        @progress_arg("x")
        def positional(progress=None):  # pragma: no cover - refused at decoration
            return progress

    assert as_callback(None) is None and as_callback(False) is None and as_callback(print) is print
    with pytest.raises(TypeError, match="needs the @progress_arg decorator"):
        as_callback(True)


def test_cli_display_draws_rich_bars_on_a_terminal(monkeypatch):
    from cxrctx.cli import progress as cli_progress

    buf = io.StringIO()
    term = Console(file=buf, force_terminal=True, width=120)
    monkeypatch.setattr(cli_progress, "err_console", term)
    with cli_progress.progress_display("build-priors") as show:
        assert isinstance(show, cli_progress.RichBars)
        show("reports", 5, 10)
        show.bar.refresh()
    assert "build-priors reports" in buf.getvalue() and "5/10" in buf.getvalue()


def test_cli_display_is_tqdm_lines_off_a_terminal_and_silent_when_disabled(capsys):
    from cxrctx.cli.progress import progress_display

    with progress_display("label-lesions") as show:
        assert isinstance(show, TqdmBars)
        show(3, 3, 0)
    with progress_display("label-lesions", disable=True) as show:
        show(3, 3, 0)
    err = capsys.readouterr().err
    assert err.count("label-lesions documents: 100%|##########| 3/3 ") == 1
