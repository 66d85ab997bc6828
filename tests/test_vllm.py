"""The real vLLM engine (its CPU build) under every LLM stage: `make test-vllm`.

Needs the `.venv-vllm` environment that `make setup-vllm` builds (vLLM's CPU build, ray[data],
SmolLM2-135M-Instruct converted to a Hugging Face folder). No stand-in engine anywhere here;
the engine is started once per session (`engine`) and shared, except where the command
itself must build it (the CLI run, the Ray replicas). Deselected from the default suite by
the `vllm` marker. Where vLLM or the model is missing the tests skip, unless
CXRCTX_VLLM_MODEL is set (as `make test-vllm` does): then that is a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / ".venv-vllm" / "models" / "smollm2-135m"
#: small engine for 2 shared cores: 1 GiB of KV cache, 4k context
OPTS: dict[str, Any] = {"kv_cache_space_gib": 1, "max_model_len": 4096}
STATUSES = {"positive", "negative", "uncertain", "not_mentioned"}


def _unavailable(why: str) -> None:
    if os.environ.get("CXRCTX_VLLM_MODEL"):
        pytest.fail(f"make test-vllm: {why}")
    pytest.skip(why)


@pytest.fixture(scope="session")
def vllm_model() -> str:
    try:
        import vllm  # noqa: F401
    except ImportError:
        _unavailable("vLLM is not installed here (make setup-vllm builds .venv-vllm)")
    model = Path(os.environ.get("CXRCTX_VLLM_MODEL") or DEFAULT_MODEL)
    if not (model / "config.json").is_file():
        _unavailable(f"{model}: no converted model (make setup-vllm)")
    return str(model)


@pytest.fixture(scope="session")
def engine(vllm_model: str):
    """One real vLLM engine for the session (start-up is the slow part on CPU)."""
    from cxrctx.llm import get_engine

    eng = get_engine("vllm", vllm_model, **OPTS)
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cxrctx.mimic.build import build_priors
    from cxrctx.synth import synthesize

    base = tmp_path_factory.mktemp("vllm_synth")
    synthesize(base / "root", patients=3, seed=5)
    build_priors(base / "root", base / "records", workers=1)
    return base / "records"


@pytest.fixture(scope="session")
def hedged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Reports whose hedges the rules leave to the model (hybrid modes ask about them)."""
    path = tmp_path_factory.mktemp("vllm_hedged") / "reports.csv"
    pl.DataFrame(
        {
            "id": ["h1", "h2", "h3", "h4"],
            "text": [
                "FINDINGS: Possible left lower lobe pneumonia versus atelectasis. No pneumothorax.",
                "FINDINGS: Cannot exclude a small right pneumothorax. Heart size is normal.",
                "IMPRESSION: Questionable mild pulmonary edema. Small left pleural effusion.",
                "FINDINGS: Borderline cardiomegaly. Possible right basilar consolidation.",
            ],
        }
    ).write_csv(path)
    return path


def _labels_are_valid(out: Path, docs: int) -> pl.DataFrame:
    from cxrctx.io import read_shards
    from cxrctx.vocab import LESIONS

    man = json.loads((out / "manifest.json").read_text())
    labels = read_shards(out / "labels")
    assert set(labels["status"].unique().to_list()) <= STATUSES
    assert set(labels["lesion"].unique().to_list()) <= set(LESIONS)
    assert labels["id"].n_unique() + man["counts"].get("failed", 0) >= docs
    return labels


# ---------------------------------------------------------------------------- engine facts


def test_usage_statistics_are_off_once_the_project_starts_vllm(engine):
    from vllm.usage.usage_lib import is_usage_stats_enabled

    assert os.environ["VLLM_NO_USAGE_STATS"] == "1" and os.environ["DO_NOT_TRACK"] == "1"
    assert is_usage_stats_enabled() is False


def test_the_cpu_platform_gets_no_gpu_options(engine):
    assert engine.gpu is False
    assert "gpu_memory_utilization" not in engine.engine_args
    assert engine.engine_args["enforce_eager"] is True
    assert engine.engine_args["enable_prefix_caching"] is True
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "1"


def test_token_counts_come_from_vllms_outputs(engine):
    from cxrctx.llm import ChatRequest, Sampling

    msgs = [
        {"role": "system", "content": "You label chest X-ray reports."},
        {"role": "user", "content": "Small left pleural effusion."},
    ]
    free, schema = engine.complete(
        [
            ChatRequest(msgs),
            ChatRequest(
                msgs,
                json_schema={
                    "type": "object",
                    "properties": {
                        "effusion": {"type": "string", "enum": ["positive", "negative"]}
                    },
                    "required": ["effusion"],
                },
            ),
        ],
        Sampling(max_tokens=5),
    )
    ids = engine.llm.get_tokenizer().apply_chat_template(
        msgs, add_generation_prompt=True, tokenize=True
    )
    prompt_len = len(ids["input_ids"] if hasattr(ids, "keys") else ids)  # a BatchEncoding
    assert free.prompt_tokens == prompt_len
    assert (free.completion_tokens, free.finish_reason) == (5, "length")
    assert 1 <= schema.completion_tokens <= 5


def test_bad_options_and_models_are_one_line_errors(vllm_model, tmp_path):
    from cxrctx.errors import CxrctxError
    from cxrctx.llm import get_engine

    with pytest.raises(CxrctxError, match=r"applies to a GPU.*kv_cache_space_gib"):
        get_engine("vllm", vllm_model, gpu_memory_utilization=0.5)
    with pytest.raises(CxrctxError, match=r"does not take option\(s\) n_ctx: not engine arguments"):
        get_engine("vllm", vllm_model, n_ctx=4096)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(CxrctxError, match="not a single file; convert a GGUF"):
        get_engine("vllm", str(gguf))
    with pytest.raises(CxrctxError, match=r"no config\.json"):
        get_engine("vllm", str(tmp_path))
    with pytest.raises(CxrctxError, match="no such model folder"):
        get_engine("vllm", str(tmp_path / "absent"))


# ---------------------------------------------------------------------------- label-lesions


def test_cli_label_lesions_hybrid_short_vllm_provenance(vllm_model, hedged, tmp_path):
    """The command as a user runs it (its own process builds the engine)."""
    import vllm

    out = tmp_path / "short"
    cmd = [
        sys.executable,
        "-m",
        "cxrctx.cli",
        "label-lesions",
        str(hedged),
        "--out",
        str(out),
        "--backend",
        "vllm",
        "--model",
        vllm_model,
        "--mode",
        "short",
        "--limit",
        "2",
        "--engine-opt",
        "kv_cache_space_gib=1",
        "--engine-opt",
        "max_model_len=4096",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("VLLM_NO_USAGE_STATS", None)
    env.pop("DO_NOT_TRACK", None)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    man = json.loads((out / "manifest.json").read_text())
    cfg = man["config"]
    assert (cfg["backend"], cfg["model"]) == ("vllm", vllm_model)
    assert cfg["engine_options"]["engine_version"] == vllm.__version__
    assert cfg["engine_options"]["options"] == {"kv_cache_space_gib": 1, "max_model_len": 4096}
    assert cfg["sampling"]["max_tokens"] == 384 and cfg["mode"] == "short"
    assert man["counts"]["llm"] > 0 and man["counts"]["completion_tokens"] > 0
    _labels_are_valid(out, 2)


@pytest.mark.parametrize("mode", ["cot", "llm"])
def test_label_lesions_modes_on_the_real_engine(engine, hedged, tmp_path, mode):
    from cxrctx.io import read_shards
    from cxrctx.labeling import label_lesions

    run = label_lesions(hedged, tmp_path / mode, engine=engine, labeler=mode)
    c = run.result.counts
    labels = _labels_are_valid(tmp_path / mode, 4)
    assert labels.height > 0
    docs = read_shards(tmp_path / mode / "documents")
    assert c["completion_tokens"] == docs["completion_tokens"].sum() > 0
    assert c["prompt_tokens"] > c["completion_tokens"]
    if mode == "cot":
        assert c["llm"] > 0  # label rows the model decided
    prov = run.manifest.extra["provenance"]
    assert (prov["backend"], prov["model"]) == ("vllm", engine.model)


def test_an_interrupted_label_run_resumes_from_its_cache(engine, hedged, tmp_path):
    from cxrctx.labeling import label_lesions

    out = tmp_path / "resume"

    def stop(p: Any) -> None:
        if p.requests >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        label_lesions(hedged, out, engine=engine, labeler="short", batch_size=1, progress=stop)
    assert not (out / "manifest.json").exists()
    run = label_lesions(hedged, out, engine=engine, labeler="short", batch_size=1)
    c = run.result.counts
    assert c["cached"] == 2 and c["labeled"] == 4  # the interrupted run's answers are kept
    assert c["engine_requests"] == 2  # only the rest was asked
    _labels_are_valid(out, 4)


# ---------------------------------------------------------------------------- other stages


def test_structure_reports_on_the_real_engine(engine, records, tmp_path):
    from cxrctx.llm import Sampling
    from cxrctx.structure.run import structure_reports

    # one report, 128 tokens (256 for the repair): the 135M model's structure rarely passes
    # the checks (the rules' draft then stands in, counted), and on 2 busy cores vLLM's CPU
    # build decodes a few tokens a second under a JSON schema: 384 tokens took 9 minutes
    run = structure_reports(
        records, tmp_path / "s", engine=engine, limit=1, sampling=Sampling(max_tokens=128)
    )
    man = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert man["config"]["backend"] == "vllm"
    c = run.result.counts
    assert c["completion_tokens"] == man["counts"]["completion_tokens"] > 0
    assert c["engine_requests"] >= 1
    assert c["by_model"] + c["by_rules"] + c["failed"] == c["reports"] == 1


def test_generate_aggregates_reports_with_the_real_engine(engine, monkeypatch, tmp_path):
    """generate's aggregator phase on vLLM; the image model phases are replaced by fixed
    ROI sentences (torch + timm are not part of the vLLM environment)."""
    from types import SimpleNamespace

    from cxrctx.reportgen import generate as G
    from cxrctx.vocab import LESIONS, ROIS

    cfg = SimpleNamespace(classifier_threshold=0.5, use_classifier=True)
    probs = [0.9 if les == "pleural effusion" else 0.1 for les in LESIONS]
    texts = {
        "left_lung": "Small left pleural effusion.",
        "cardiac_silhouette": "The heart size is normal.",
    }
    items = [
        SimpleNamespace(study_id=s, subject_id=10, dicom_id=f"d{s}", split="test") for s in (1, 2)
    ]
    rows = [
        G._row(it, [texts.get(r.replace(" ", "_"), "") for r in ROIS], probs, None, cfg)
        for it in items
    ]
    monkeypatch.setattr(
        G, "_load_inputs", lambda *a, **k: G._Inputs(None, None, None, None, 32, None, 2, [])
    )
    monkeypatch.setattr(G, "_decode", lambda *a, **k: rows)
    res = G.generate("run", out=tmp_path / "gen", engine=engine)
    df = pl.read_parquet(sorted((tmp_path / "gen").rglob("*.parquet"))[0])
    llm = df.filter(pl.col("aggregator") == f"llm:vllm/{engine.model}")
    assert llm.height + res.counts["aggregator_failures"] == 2
    assert all(r.strip() for r in llm["report"].to_list())


# ---------------------------------------------------------------------------- Ray Data LLM


def test_label_lesions_through_ray_data_llm_on_a_cpu_placement_group(vllm_model, hedged, tmp_path):
    import vllm

    from cxrctx.labeling import label_lesions
    from cxrctx.llm.ray_executor import RayExecutor
    from cxrctx.llm.spec import EngineSpec

    spec = EngineSpec(backend="vllm", model=vllm_model, options=dict(OPTS))
    with RayExecutor(workers=1) as ex:
        run = label_lesions(hedged, tmp_path / "ray", engine=spec, executor=ex, labeler="short")
    c = run.result.counts
    assert c["completion_tokens"] > 0 and c["llm"] > 0
    cfg = run.manifest.config
    assert cfg["engine_options"]["engine_version"] == vllm.__version__
    _labels_are_valid(tmp_path / "ray", 4)
