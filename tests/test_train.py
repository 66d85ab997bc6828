"""The tiny CLALA-Net preset trains for real on synthetic studies; resume; bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
torch.set_num_threads(1)

from trainer_fixtures import make_root, train_args  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from cxrctx.cli import app  # noqa: E402
from cxrctx.errors import CxrctxError  # noqa: E402
from cxrctx.train import train  # noqa: E402
from cxrctx.train.config import make_config  # noqa: E402
from cxrctx.train.loop import load_checkpoint  # noqa: E402

pytestmark = pytest.mark.train


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return make_root(tmp_path_factory.mktemp("train"), patients=120, size=96, seed=3)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, Path]:
    return make_root(tmp_path_factory.mktemp("small"), patients=24, size=64, seed=5)


def _losses(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_run(data, tmp_path_factory) -> tuple[Path, object]:
    """The tiny preset trained on 120 synthetic patients (both stages), shared by the tests below."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    cfg = make_config(
        "tiny", epochs_stage1=6, epochs_stage2=1, classifier_epochs=12, max_steps=None
    )
    res = train(
        cfg,
        records=data["records"],
        labels=data["labels"],
        rois=data["rois"],
        images=data["root"],
        out=run,
    )
    return run, res


def test_tiny_training_learns_the_lesions(tiny_run):
    """Essential end-to-end test: the loss falls and held-out lesion predictions beat the majority baseline."""
    run, res = tiny_run
    assert res.stages == [1, 2]
    rows = [m for m in _losses(run) if "loss" in m and m["stage"] == 1]
    rows = [m for m in rows if m.get("llcl_anchors", 1) > 0]
    first = sum(m["loss"] for m in rows[:3]) / 3
    last = sum(m["loss"] for m in rows[-3:]) / 3
    assert last < 0.8 * first, (first, last)
    assert rows[-1]["ce"] < rows[0]["ce"] * 0.6
    s1 = next(m["eval"] for m in _losses(run) if "eval" in m and m["stage"] == 1)
    assert s1["n"] >= 60
    # a constant (majority) predictor has AUC 0.5 on every lesion. The renderer draws these
    # four large and clearly (small nodules, subtle opacities are harder at 64 px)
    visible = {k: s1["auc"][k] for k in ("cardiomegaly", "pleural effusion", "edema", "emphysema")}
    got = [v for v in visible.values() if v is not None]
    assert len(got) >= 3, visible
    assert sum(got) / len(got) > 0.75 and min(got) > 0.65, visible
    assert s1["macro_auc"] > 0.55, s1["auc"]
    # thresholds calibrated on the validation split travel with the weights
    ck = load_checkpoint(run / "checkpoints" / "final.pt")
    assert ck["stage"] == 2 and ck["config"]["preset"] == "tiny"
    thr = ck["model"]["lesion_thresholds"]
    from cxrctx.vocab import LESIONS

    assert thr.tolist() == pytest.approx([s1["thresholds"][les] for les in LESIONS])
    assert (run / "tokenizer.json").exists()
    assert pl.read_parquet(run / "skips.parquet").height == 0


def test_trained_model_writes_a_positive_sentence_for_a_visible_effusion(tiny_run, data, tmp_path):
    """The decoder must not lose what the classifier sees: held-out studies with a (rendered,
    large) pleural effusion get at least one report that asserts an effusion."""
    from cxrctx.labeling import keyword_labels
    from cxrctx.reportgen.generate import generate

    run, _ = tiny_run
    lab = pl.read_parquet(data["labels"] / "labels" / "part-00000.parquet")
    effusion = {
        int(i)
        for i in lab.filter(
            (pl.col("lesion") == "pleural effusion") & (pl.col("status") == "positive")
        )["id"]
    }
    generate(run, out=tmp_path / "gen", split="validate")
    gen = pl.read_parquet(tmp_path / "gen" / "generated" / "part-00000.parquet")
    gen = gen.filter(pl.col("study_id").is_in(list(effusion)))
    assert gen.height >= 3
    said = keyword_labels(
        gen.select(pl.col("study_id").cast(pl.String).alias("id"), pl.col("report").alias("text"))
    )
    hits = said.filter((pl.col("lesion") == "pleural effusion") & (pl.col("status") == "positive"))
    assert hits.height >= 1, gen["report"].to_list()[:5]


def _cfg(**kw):
    # dropout on: resume must restore the RNG exactly for the masks to match
    base = dict(
        epochs_stage1=2,
        epochs_stage2=1,
        checkpoint_every=3,
        batch_size=8,
        log_every=1,
        dropout=0.1,
        classifier_epochs=2,
        global_image_size=64,
    )
    base.update(kw)
    return make_config("tiny", **base)


def test_resume_after_interruption_equals_uninterrupted(small, tmp_path):
    kw = dict(
        records=small["records"], labels=small["labels"], rois=small["rois"], images=small["root"]
    )
    full = train(_cfg(), out=tmp_path / "full", **kw)
    from cxrctx.train.loop import TrainingInterrupted

    with pytest.raises(TrainingInterrupted):
        train(_cfg(), out=tmp_path / "cut", interrupt_after=5, **kw)  # last checkpoint at step 3
    with pytest.raises(CxrctxError, match="--resume"):
        train(_cfg(), out=tmp_path / "cut", **kw)
    again = train(_cfg(), out=tmp_path / "cut", resume=True, **kw)
    assert again.global_step == full.global_step and again.stages == [1, 2]
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "final.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "final.pt")["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _losses(tmp_path / "full") == _losses(tmp_path / "cut")
    # resuming a finished run is a no-op that keeps the weights
    train(_cfg(), out=tmp_path / "cut", resume=True, **kw)
    c = load_checkpoint(tmp_path / "cut" / "checkpoints" / "final.pt")["model"]
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_checkpoint_from_another_config_is_refused(small, tmp_path):
    kw = dict(
        records=small["records"], labels=small["labels"], rois=small["rois"], images=small["root"]
    )
    train(_cfg(max_steps=2), out=tmp_path / "run", stage="1", **kw)
    with pytest.raises(CxrctxError, match=r"another config \(embed_dim"):
        train(_cfg(max_steps=2, embed_dim=32), out=tmp_path / "run", stage="1", resume=True, **kw)
    # runtime knobs may change on resume
    train(_cfg(max_steps=2, num_workers=0, log_every=2), out=tmp_path / "run", stage="2", **kw)
    assert (tmp_path / "run" / "checkpoints" / "stage2.pt").exists()


def test_stage2_needs_stage1(small, tmp_path):
    kw = dict(
        records=small["records"], labels=small["labels"], rois=small["rois"], images=small["root"]
    )
    with pytest.raises(CxrctxError, match=r"stage1\.pt"):
        train(_cfg(), out=tmp_path / "run", stage="2", **kw)


def test_config_values_out_of_range():
    with pytest.raises(CxrctxError, match="batch_size"):
        make_config("tiny", batch_size=0)
    with pytest.raises(CxrctxError, match="lr_stage1"):
        make_config("tiny", lr_stage1=-1.0)
    with pytest.raises(CxrctxError, match="unknown preset"):
        make_config("huge")
    with pytest.raises(CxrctxError, match="divisible"):
        make_config("tiny", embed_dim=63)
    paper = make_config("paper")
    assert (paper.batch_size, paper.epochs_stage1 + paper.epochs_stage2, paper.weight_decay) == (
        24,
        15,
        0.05,
    )
    assert (paper.lr_stage1, paper.lr_stage2, paper.image_size_stage1, paper.image_size_stage2) == (
        1e-4,
        1e-5,
        224,
        384,
    )
    assert (paper.lca_pos_weight, paper.lca_neg_weight) == (0.9, 0.1)


def test_cli_train_bad_config_and_missing_inputs(small, tmp_path):
    r = CliRunner().invoke(app, train_args(small, tmp_path / "r", "--set", "batch_size=0"))
    assert r.exit_code == 2 and "batch_size" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, train_args({**small, "records": tmp_path / "nope"}, tmp_path / "r"))
    assert r.exit_code == 2 and "records" in r.output


def test_labels_for_other_ids_are_refused(small, tmp_path):
    lab = pl.read_parquet(small["labels"] / "labels" / "part-00000.parquet")
    other = tmp_path / "other" / "labels"
    other.mkdir(parents=True)
    lab.with_columns((pl.lit("9") + pl.col("id")).alias("id")).write_parquet(
        other / "part-00000.parquet"
    )
    with pytest.raises(CxrctxError, match="match none"):
        train(
            _cfg(),
            records=small["records"],
            labels=other.parent,
            rois=small["rois"],
            images=small["root"],
            out=tmp_path / "r",
        )


def test_missing_and_corrupt_images_are_recorded_skips(small, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(small["root"], root)
    rois = (
        pl.read_parquet(small["rois"] / "rois" / "part-00000.parquet")
        .filter(pl.col("split") == "train")
        .sort("dicom_id")
    )
    gone, bad = rois["path"][0], rois["path"][1]
    (root / gone).unlink()
    (root / bad).write_bytes(b"not an image at all")
    # both stages decode at their own size; each broken image is one skip
    res = train(
        _cfg(max_steps=2),
        records=small["records"],
        labels=small["labels"],
        rois=small["rois"],
        images=root,
        out=tmp_path / "r",
    )
    assert res.skips.get("image missing") == 1 and res.skips.get("unreadable image") == 1, res.skips
    sk = pl.read_parquet(tmp_path / "r" / "skips.parquet")
    assert sk.height == 2


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_corrupt_dicom_is_a_recorded_skip(tmp_path):
    from cxrctx.train.data import CropStore, ImageError, Item, load_image

    p = tmp_path / "x.dcm"
    p.write_bytes(b"DICM" * 40)
    with pytest.raises(ImageError, match="corrupt DICOM"):
        load_image(p)
    item = Item(
        "d", 1, 1, "train", "x.dcm", 10, 10, [(0, 0, 5, 5)] * 11, [""] * 11, [0.0] * 14, [0] * 11
    )
    good, skips = CropStore(tmp_path, None, 8, 8).prepare([item])
    assert good == [] and skips[0]["reason"].startswith("corrupt DICOM")


@pytest.mark.slow
def test_torchrun_ddp_two_processes_on_cpu(small, tmp_path):
    """The same code path under torchrun (gloo on CPU): 2 ranks train, rank 0 writes the run."""
    import os
    import subprocess
    import sys

    cfg = {**make_config("tiny", max_steps=3, batch_size=8).model_dump(mode="json")}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29533",
        "-m",
        "cxrctx.cli",
        *train_args(small, tmp_path / "run", "--config", str(tmp_path / "cfg.json")),
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "final.pt").exists()
    steps = [m for m in _losses(tmp_path / "run") if "loss" in m]
    assert steps and max(m["step"] for m in steps) == 6  # 3 steps in each of the two stages


def test_join_counts_studies_without_labels(small, tmp_path):
    from cxrctx.train.data import join

    lab = pl.read_parquet(small["labels"] / "labels" / "part-00000.parquet")
    ids = sorted(lab["id"].unique().to_list())
    half = tmp_path / "half" / "labels"
    half.mkdir(parents=True)
    lab.filter(pl.col("id").is_in(ids[: len(ids) // 2])).write_parquet(half / "part-00000.parquet")
    full = join(records=small["records"], labels=small["labels"], rois=small["rois"])
    part = join(records=small["records"], labels=half.parent, rois=small["rois"])
    assert full.skips == []
    n_skip = part.skip_counts().get("no labels for study", 0)
    assert n_skip > 0 and len(part.items) + n_skip == len(full.items)
    # LLCL keys: a positive lesion marks exactly the ROIs it concerns
    it = next(i for i in full.items if i.targets[2] == 1.0)  # pleural effusion
    assert any(k & (1 << 2) for k in it.roi_keys)


def test_traversal_in_dicom_id_or_path_is_a_counted_skip_and_writes_nothing_outside(
    small, tmp_path
):
    rois = pl.read_parquet(small["rois"] / "rois" / "part-00000.parquet").sort("dicom_id")
    train_rows = rois.filter(pl.col("split") == "train")
    evil_id, evil_path = train_rows["dicom_id"][0], train_rows["dicom_id"][1]
    rois = rois.with_columns(
        pl.when(pl.col("dicom_id") == evil_id)
        .then(pl.lit("../../../escaped"))
        .otherwise(pl.col("dicom_id"))
        .alias("dicom_id"),
        pl.when(pl.col("dicom_id") == evil_path)
        .then(pl.lit("../../outside.jpg"))
        .otherwise(pl.col("path"))
        .alias("path"),
    )
    from trainer_fixtures import rewrite_shard

    bad = tmp_path / "in"
    shutil.copytree(small["rois"], bad)
    rewrite_shard(bad, bad / "rois" / "part-00000.parquet", rois)
    out = tmp_path / "deep" / "er" / "run"
    res = train(
        _cfg(max_steps=1),
        records=small["records"],
        labels=small["labels"],
        rois=bad,
        images=small["root"],
        out=out,
        stage="1",
    )
    assert res.skips.get("invalid dicom_id") == 1, res.skips
    assert res.skips.get("invalid image path") == 1, res.skips
    assert not list(tmp_path.rglob("escaped*"))
    cached = [p for p in (out / "cache").rglob("*.npz")]
    assert cached and all(out in p.parents for p in cached)
    sk = pl.read_parquet(out / "skips.parquet")
    assert "../../../escaped" in sk["dicom_id"].to_list()


def test_paper_preset_refuses_random_weights(small, tmp_path):
    kw = dict(
        records=small["records"], labels=small["labels"], rois=small["rois"], images=small["root"]
    )
    with pytest.raises(CxrctxError, match=r"vit_weights=FILE.*allow_random_init"):
        train(make_config("paper"), out=tmp_path / "r", **kw)
    assert not (tmp_path / "r").exists()  # refused before anything is written


def test_cli_help_lists_choices_and_examples():
    r = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    assert "tiny" in r.output and "paper" in r.output and "both" in r.output
    assert "Example:" in r.output and "cxrctx train --records" in r.output
    r = CliRunner().invoke(
        app,
        [
            "train",
            "--records",
            "x",
            "--labels",
            "x",
            "--rois",
            "x",
            "--images",
            "x",
            "--out",
            "x",
            "--preset",
            "huge",
        ],
    )
    assert r.exit_code == 2 and "huge" in r.output


def test_cli_prints_plain_progress_lines_when_not_a_terminal(small, tmp_path):
    args = train_args(
        small, tmp_path / "r", "--stage", "1", "--set", "max_steps=2", "--set", "batch_size=8"
    )
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("train stage 1: ")]
    assert len(lines) == 2 and lines[0].startswith("train stage 1:   0%|          | 0/2 ")
    assert lines[1].startswith("train stage 1: 100%|##########| 2/2 ") and "loss " in lines[1]


def test_importing_the_trainer_api_is_typed_and_torch_free():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['timm'] = None\n"
        "from cxrctx.train import train, make_config, TrainResult\n"
        "from cxrctx.errors import CxrctxError\n"
        "try:\n    train(make_config('tiny'), records='r', labels='l', rois='x', images='i', out='o')\n"
        "except CxrctxError as e:\n    print(e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "pip install 'cxrctx[train]'" in r.stdout


def test_a_foreign_non_empty_out_is_refused_before_training(tmp_path):
    """The shared output policy: train never writes into a folder that is not a train run."""
    from cxrctx.train.config import make_config
    from cxrctx.train.loop import _check_run_dir

    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(CxrctxError, match="not a train run"):
        _check_run_dir(out, make_config("tiny"), [1, 2], resume=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CxrctxError, match="not a directory"):
        _check_run_dir(tmp_path / "file", make_config("tiny"), [1, 2], resume=False)
