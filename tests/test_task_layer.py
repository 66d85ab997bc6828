"""The task layer: run_task's policy (dedup, cache, repair, failures, streaming), the
aggregator and judge tasks, the shared engine options and plain progress lines."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field
from typer.testing import CliRunner

from cxrctx.cli import app
from cxrctx.errors import CxrctxError
from cxrctx.llm import get_engine
from cxrctx.llm.base import ChatRequest, Completion, Sampling
from cxrctx.llm.cache import ResultCache
from cxrctx.llm.fake import FakeEngine
from cxrctx.llm.llamacpp import free_threads
from cxrctx.llm.runner import LocalExecutor, TaskResult, run_task
from cxrctx.llm.task import AnswerError, Task, json_schema
from cxrctx.reportgen.tasks import aggregate_reports, judge_reports


class Word(BaseModel):
    model_config = ConfigDict(extra="forbid")
    word: str = Field(max_length=10)


class EchoTask(Task[str, Word]):
    name = "echo"
    answer_model = Word
    prompt_sha256 = "p1"

    def local_answer(self, item: str) -> Word | None:
        if item == "":
            raise AnswerError("empty item")
        return Word(word="short") if item == "skip" else None

    def request(self, item: str) -> ChatRequest:
        return ChatRequest(
            [{"role": "user", "content": item}], json_schema=self.request_schema(item)
        )


def echo(req: ChatRequest) -> str:
    return json.dumps({"word": req.messages[0]["content"][:10]})


def run(items: list[str], engine: Any, **kw: Any) -> tuple[list[TaskResult], Any]:
    got: list[TaskResult] = []
    stats = run_task(EchoTask(), items, engine, on_batch=got.extend, **kw)
    return got, stats


def test_schema_is_generated_flat_and_hashed():
    s = json_schema(Word)
    assert s["properties"]["word"] == {"maxLength": 10, "type": "string"}
    assert s["additionalProperties"] is False and "$defs" not in s
    assert len(EchoTask().schema_sha256) == 64


def test_dedup_local_answers_and_order():
    eng = FakeEngine("m", responder=echo)
    got, stats = run(["a", "b", "a", "skip", "", "b"], eng, batch_size=10)
    assert [r.answer.word if r.answer else r.error for r in got] == [
        "a",
        "b",
        "a",
        "short",
        "empty item",
        "b",
    ]
    assert eng.calls == 2 and stats.requests == 2 and stats.local == 2
    assert [r.duplicate for r in got] == [False, False, True, False, False, True]


def test_results_stream_per_batch_and_progress_is_reported():
    batches, progress = [], []
    run_task(EchoTask(), (str(i) for i in range(7)), FakeEngine("m", responder=echo),
             batch_size=3, on_batch=lambda rs: batches.append(len(rs)), progress=progress.append,
             total=7)  # fmt: skip
    assert batches == [3, 3, 1]
    assert [p.done for p in progress] == [0, 3, 6, 7] and progress[-1].total == 7


def test_cache_hits_stale_entries_and_sampling_in_the_key(tmp_path):
    with ResultCache(tmp_path) as c:
        run(["a", "b"], FakeEngine("m", responder=echo), cache=c)
    eng = FakeEngine("m", responder=echo)
    with ResultCache(tmp_path) as c:
        got, _ = run(["a", "b"], eng, cache=c)
    assert eng.calls == 0 and all(r.cached for r in got)
    with ResultCache(tmp_path) as c:
        run(["a"], eng, cache=c, sampling=Sampling(max_tokens=7))
    assert eng.calls == 1
    # an entry that no longer validates (e.g. edited by hand) is asked again, not trusted
    f = next(tmp_path.glob("*.jsonl"))
    f.write_text(f.read_text().replace('"word":"a"', '"word":"aaaaaaaaaaaaaaa"'))
    eng2 = FakeEngine("m", responder=echo)
    with ResultCache(tmp_path) as c:
        got, _ = run(["a"], eng2, cache=c)
    assert eng2.calls == 1 and got[0].answer.word == "a"


def test_torn_last_line_is_ignored(tmp_path):
    with ResultCache(tmp_path) as c:
        run(["a"], FakeEngine("m", responder=echo), cache=c)
    f = next(tmp_path.glob("*.jsonl"))
    f.write_bytes(f.read_bytes() + b'{"key":"abc", "torn')
    with ResultCache(tmp_path) as c:
        assert len(c) == 1


def test_one_repair_then_a_failure_row_with_reason_and_attempts():
    answers = iter(['{"word": "far too long a word"}', '{"word": "still much too long"}'])
    got, stats = run(["x"], FakeEngine("m", responder=lambda r: next(answers)))
    r = got[0]
    assert r.answer is None and r.attempts == 2 and stats.repairs == 1
    assert "after repair" in r.error and "word" in r.error and not r.transient


def test_permanent_error_stops_the_run_after_the_batch():
    err = Completion("", "error", error="401 bad key", error_kind="permanent")
    eng = FakeEngine("m", responder=lambda r: err)
    seen: list[int] = []
    with pytest.raises(CxrctxError, match="stopped after the first such answer"):
        run_task(EchoTask(), [str(i) for i in range(20)], eng, batch_size=4,
                 on_batch=lambda rs: seen.append(len(rs)))  # fmt: skip
    assert seen == [4] and eng.calls == 4  # no repair, no second batch


def test_a_broken_engine_is_a_transient_failure_not_a_crash():
    class Broken(FakeEngine):
        def complete(self, requests, sampling):
            raise RuntimeError("boom")

    got, stats = run(["a"], Broken("m"))
    assert got[0].transient and "boom" in got[0].error and stats.failed == 1


def test_an_executor_can_be_plugged_in():
    class Counting(LocalExecutor):
        batches = 0

        def map_batches(self, task, engine, sampling, batches, secrets):
            for out in super().map_batches(task, engine, sampling, batches, secrets):
                Counting.batches += 1
                yield out

    got, _ = run(
        ["a", "b", "c"], FakeEngine("m", responder=echo), batch_size=2, executor=Counting()
    )
    assert Counting.batches == 2 and [r.answer.word for r in got] == ["a", "b", "c"]


# ---------------------------------------------------------------------------- aggregator, judge


def _rows() -> list[dict[str, Any]]:
    said = [{"roi": "left lung", "text": "Small left effusion."}, {"roi": "right lung", "text": ""}]
    silent = [{"roi": "left lung", "text": ""}]
    return [
        {"study_id": 1, "roi_sentences": said, "predicted_lesions": ["pleural effusion"], "report": "m1"},
        {"study_id": 2, "roi_sentences": said, "predicted_lesions": ["pleural effusion"], "report": "m2"},
        {"study_id": 3, "roi_sentences": silent, "predicted_lesions": [], "report": ""},
    ]  # fmt: skip


def test_aggregator_repairs_dedups_and_never_asks_about_nothing(tmp_path):
    answers = iter(["not json", json.dumps({"report": "Small  left effusion."})])
    eng = FakeEngine("agg", responder=lambda r: next(answers))
    rows = _rows()
    failures, sha, stats = aggregate_reports(rows, eng, cache_dir=tmp_path)
    assert eng.calls == 2 and stats.repairs == 1  # studies 1 and 2 share one request
    assert [r["report"] for r in rows[:2]] == ["Small left effusion."] * 2
    assert failures == 1 and rows[2]["aggregator_error"].startswith("no region")
    assert rows[2]["report"] == "" and len(sha) == 64
    eng2 = FakeEngine("agg", responder=lambda r: "unused")
    aggregate_reports(_rows(), eng2, cache_dir=tmp_path)
    assert eng2.calls == 0  # cached


def test_aggregator_keeps_the_merge_when_the_answer_stays_unusable():
    rows = _rows()
    failures, _, _ = aggregate_reports(
        rows, FakeEngine("agg", responder=lambda r: '{"report": ""}')
    )
    assert failures == 3 and rows[0]["report"] == "m1" and "report" in rows[0]["aggregator_error"]


def test_judge_scores_and_does_not_judge_empty_reports():
    ok = {"clinical_accuracy": 3, "findings_completeness": 2, "linguistic_quality": 5,
          "report_structure": 4, "rationale": "x"}  # fmt: skip
    eng = FakeEngine("j", responder=lambda r: json.dumps(ok))
    per, failed, _ = judge_reports(eng, [("1", "Effusion.", "Effusion."), ("2", "  ", "Edema.")])
    assert per == [{"id": "1", "clinical_accuracy": 3, "findings_completeness": 2,
                    "linguistic_quality": 5, "report_structure": 4}]  # fmt: skip
    assert failed == [("2", "empty generated report: not judged")] and eng.calls == 1


# ---------------------------------------------------------------------------- CLI options


def test_model_commands_share_one_engine_vocabulary():
    runner = CliRunner()
    for cmd in ("label-lesions", "generate", "evaluate"):
        out = runner.invoke(app, [cmd, "--help"], terminal_width=200).output
        for opt in ("--backend", "--model", "--base-url", "--api-key-env", "--engine-opt",
                    "--timeout", "--threads", "--allow-failures", "--allow-public-api"):  # fmt: skip
            assert opt in out, (cmd, opt)
        # the option's own line in the options list: "--backend [a|b|c]"
        lines = out.splitlines()
        k = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("--backend ["))
        choices = lines[k] + lines[k + 1]  # a narrow terminal wraps the choices once
        assert all(b in choices for b in ("llamacpp", "openai", "vllm")), (cmd, choices)
        assert "fake" not in choices
        # label-lesions alone adds the model-free rules backend
        assert ("rules" in choices) is (cmd == "label-lesions")
    r = runner.invoke(app, ["generate", "run", "--out", "o", "--backend", "fake", "--model", "m"])
    assert r.exit_code == 2


def test_engine_spec_rejects_options_of_another_backend():
    from cxrctx.llm.spec import EngineSpec

    with pytest.raises(CxrctxError, match="--threads applies to the llamacpp"):
        EngineSpec(backend="vllm", model="m", threads=2).engine_options()
    with pytest.raises(CxrctxError, match="does not take"):
        get_engine("fake", "m", n_threads=2)


def test_llamacpp_threads_default_to_the_free_cpus(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr("os.getloadavg", lambda: (1.2, 0, 0))
    assert free_threads()[0] == 2
    monkeypatch.setattr("os.getloadavg", lambda: (8.0, 0, 0))
    n, why = free_threads()
    assert n == 1 and "loaded" in why
