"""`--plan` (token budget from a labeled sample) and the executor CLI options (no Ray started)."""

from __future__ import annotations

import json

import polars as pl
import pytest
from _llm_helpers import TEXTS, good_answer
from typer.testing import CliRunner

from cxrctx.cli import app
from cxrctx.errors import CxrctxError
from cxrctx.llm.base import ChatRequest, Completion
from cxrctx.llm.fake import FakeEngine
from cxrctx.llm.plan import MIMIC_REPORTS, PUBLISHED_TOKENS_PER_S, make_plan

runner = CliRunner()


def fixed_tokens(req: ChatRequest) -> Completion:
    return Completion(good_answer(req), "stop", prompt_tokens=100, completion_tokens=40)


def corpus(path, copies: int = 4):
    ids = [f"{k}-{c}" for c in range(copies) for k in TEXTS]
    texts = [t for _ in range(copies) for t in TEXTS.values()]
    pl.DataFrame({"id": ids, "text": texts}).write_parquet(path)
    return path


def test_budget_is_about_200_tokens_per_report_for_mimic_in_two_gpu_hours():
    p = make_plan(sample_documents=10, total_documents=1000, llm_documents=8, llm_calls=9,
                  prompt_tokens=0, output_tokens=1500)  # fmt: skip
    assert p.throughput_tokens_per_s == PUBLISHED_TOKENS_PER_S
    assert p.budget_tokens_per_report == pytest.approx(2 * 3600 * 6300 / MIMIC_REPORTS, abs=0.1)
    assert 195 < p.budget_tokens_per_report < 205
    assert p.output_tokens_per_document == 150 and p.llm_calls_per_document == 0.9
    assert p.projected_gpu_hours == pytest.approx(150 * 1000 / 6300 / 3600, abs=1e-4)
    assert p.within_budget
    over = make_plan(sample_documents=1, total_documents=1, llm_documents=1, llm_calls=1,
                     prompt_tokens=0, output_tokens=250)  # fmt: skip
    assert not over.within_budget and over.budget_projected_gpu_hours > 2


def test_plan_counts_each_unique_text_once_and_is_stable_when_cached(tmp_path):
    from cxrctx.labeling.plan import plan_label_lesions

    src = corpus(tmp_path / "docs.parquet")
    eng = FakeEngine("scripted", responder=fixed_tokens)
    p = plan_label_lesions(
        src, tmp_path / "out", engine=eng, sample=12, throughput_tokens_per_s=1000
    )
    # first 12 docs = TEXTS twice: s1/s3/s6 (s4 repeats s1) need the model, once per text
    assert p.sample_documents == 12 and p.total_documents == 24
    assert p.llm_documents == 3 and p.llm_calls == 3 and p.output_tokens == 3 * 40
    assert p.output_tokens_per_document == 10.0
    assert p.projected_output_tokens == 240
    again = plan_label_lesions(src, tmp_path / "out", engine=FakeEngine("scripted", responder=fixed_tokens),
                               sample=12, throughput_tokens_per_s=1000)  # fmt: skip
    assert again == p
    saved = json.loads((tmp_path / "out" / "plan-sample" / "plan.json").read_text())
    assert saved["output_tokens"] == 120
    assert (tmp_path / "out" / "plan-sample" / "manifest.json").exists()
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_cli_plan_prints_the_budget(tmp_path, monkeypatch):
    # where label-lesions looks the builder up (patching cxrctx.llm.spec alone reached a
    # real, absent server: every sample document failed and the plan still printed)
    monkeypatch.setattr("cxrctx.labeling.stage.make_engine",
                        lambda spec: FakeEngine(spec.model, responder=fixed_tokens))  # fmt: skip
    src = corpus(tmp_path / "docs.parquet")
    r = runner.invoke(app, ["label-lesions", str(src), "--out", str(tmp_path / "o"), "--backend",
                            "openai", "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
                            "--mode", "llm",  # the scripted answers are --mode llm's
                            "--plan", "--plan-sample", "6", "--plan-throughput", "500",
                            "--plan-gpu", "L4"])  # fmt: skip
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "output tokens per document" in out and "LLM calls per document" in out
    assert "on L4 at 500 output tok/s" in out and "227,835 reports" in out
    plan = json.loads((tmp_path / "o" / "plan-sample" / "plan.json").read_text())
    assert plan["sample_documents"] == 6 and plan["total_documents"] == 24


def test_cli_plan_refuses_shard(tmp_path):
    src = corpus(tmp_path / "docs.parquet")
    r = runner.invoke(app, ["label-lesions", str(src), "--out", str(tmp_path / "o"), "--model",
                            "x.gguf", "--plan", "--shard", "0/2"])  # fmt: skip
    assert r.exit_code != 0 and "--plan projects the whole input" in r.output


def test_executor_options(tmp_path):
    from cxrctx.cli.engine import ExecutorKind, make_executor
    from cxrctx.llm.ray_executor import RayExecutor

    assert make_executor(ExecutorKind.local, None, 1) is None
    ex = make_executor(ExecutorKind.ray, "auto", 3)
    assert isinstance(ex, RayExecutor) and ex.workers == 3 and ex.address == "auto"
    with pytest.raises(CxrctxError, match="--executor ray only"):
        make_executor(ExecutorKind.local, None, 2)
    src = corpus(tmp_path / "docs.parquet")
    r = runner.invoke(app, ["label-lesions", str(src), "--out", str(tmp_path / "o"), "--model",
                            "x.gguf", "--workers", "2"])  # fmt: skip
    assert r.exit_code != 0 and "--executor ray only" in r.output
    r = runner.invoke(app, ["label-lesions", "--help"])
    assert "local" in r.output and "ray" in r.output and "--ray-address" in r.output


@pytest.mark.parametrize("command", ["generate", "evaluate"])
def test_generate_and_evaluate_take_the_executor_options(command):
    r = runner.invoke(app, [command, "--help"], terminal_width=200)
    assert r.exit_code == 0
    assert "--executor" in r.output and "--ray-address" in r.output and "--workers" in r.output


class Lookahead:
    """An executor that plans every batch before the first is committed (as Ray does)."""

    def map_batches(self, task, engine, sampling, batches, secrets):
        from cxrctx.llm.runner import solve_batch

        todo = list(batches)
        for works in todo:
            yield solve_batch(task, engine, sampling, works, secrets)


def flaky(req: ChatRequest) -> Completion:
    """Fixed tokens; the cardiomegaly report meets a transient server error."""
    if "enlarged" in req.messages[-1]["content"]:
        return Completion("", "error", error="503 busy", error_kind="transient")
    return fixed_tokens(req)


@pytest.mark.parametrize("responder", [fixed_tokens, flaky])
def test_planning_ahead_gives_the_local_executors_rows(responder):
    from cxrctx.labeling import label_documents

    ids = [f"{k}-{c}" for c in range(3) for k in TEXTS]
    docs = pl.DataFrame({"id": ids, "text": [t for _ in range(3) for t in TEXTS.values()]})
    a = label_documents(docs, FakeEngine("s", responder=responder), batch_size=2)
    b = label_documents(
        docs, FakeEngine("s", responder=responder), batch_size=2, executor=Lookahead()
    )
    assert a.labels.equals(b.labels) and a.failures.equals(b.failures)
    assert a.documents.drop("latency_s").equals(b.documents.drop("latency_s"))
    assert a.counts["cached"] == b.counts["cached"] > 0
    if responder is flaky:
        assert b.counts["transient_failed"] == a.counts["transient_failed"] == 3
