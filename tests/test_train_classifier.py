"""The separate global lesion classifier: its own stage, frozen in stages 1-2, reusable;
a handful of effusion studies teach the report the effusion sentence; write errors are one line."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import polars as pl
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
torch.set_num_threads(1)

from trainer_fixtures import make_root, rewrite_shard, train_args  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from cxrctx.cli import app  # noqa: E402
from cxrctx.errors import CxrctxError  # noqa: E402
from cxrctx.train import make_config, train  # noqa: E402
from cxrctx.train.loop import load_checkpoint  # noqa: E402
from cxrctx.vocab import LESIONS  # noqa: E402

pytestmark = pytest.mark.train


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, Path]:
    return make_root(tmp_path_factory.mktemp("cls_small"), patients=24, size=64, seed=5)


def _kw(d: dict[str, Path]) -> dict[str, Path]:
    return {k: d[k] for k in ("records", "labels", "rois")} | {"images": d["root"]}


def _cfg(**kw):
    base = dict(
        epochs_stage1=1,
        epochs_stage2=1,
        batch_size=8,
        classifier_epochs=2,
        classifier_batch_size=16,
        max_steps=3,
        global_image_size=64,
    )
    return make_config("tiny", **{**base, **kw})


def _classifier_weights(sd: dict) -> dict:
    return {k.removeprefix("classifier."): v for k, v in sd.items() if k.startswith("classifier.")}


def test_classifier_stage_alone_then_reused_frozen_by_an_ablation(small, tmp_path):
    a = train(_cfg(), out=tmp_path / "a", stage="classifier", **_kw(small))
    cdir = tmp_path / "a" / "classifier"
    assert a.stages == [] and not (tmp_path / "a" / "checkpoints" / "final.pt").exists()
    m = json.loads((cdir / "manifest.json").read_text())
    assert m["stage"] == "train-classifier"
    assert {f["path"] for f in m["files"]} == {"classifier.pt", "eval.json"}
    ck = load_checkpoint(cdir / "classifier.pt")
    ev = json.loads((cdir / "eval.json").read_text())
    assert ck["thresholds"].tolist() == pytest.approx([ev["thresholds"][les] for les in LESIONS])
    assert ev["n"] == a.counts["val_items"] > 0 and set(ev["auc"]) == set(LESIONS)
    # an ablation (no LCA, no LLCL, other classifier knobs asked) reuses it untouched
    b = train(
        _cfg(use_lca=False, use_llcl=False, classifier_epochs=7),
        out=tmp_path / "b",
        classifier=tmp_path / "a",
        **_kw(small),
    )
    assert b.stages == [1, 2] and not (tmp_path / "b" / "classifier").exists()
    final = load_checkpoint(tmp_path / "b" / "checkpoints" / "final.pt")
    got = _classifier_weights(final["model"])
    assert got.keys() == ck["model"].keys()
    assert all(torch.equal(got[k], ck["model"][k]) for k in got)
    assert torch.equal(final["model"]["lesion_thresholds"], ck["thresholds"])
    assert final["config"]["classifier_epochs"] == 2  # the reused classifier's own fields
    run_info = json.loads((tmp_path / "b" / "run.json").read_text())
    assert run_info["classifier"] == str(cdir)


def test_stage_one_trains_the_classifier_first_and_keeps_it_frozen(small, tmp_path):
    res = train(_cfg(), out=tmp_path / "r", **_kw(small))
    assert res.stages == [1, 2] and res.classifier["n"] > 0
    ck = load_checkpoint(tmp_path / "r" / "classifier" / "classifier.pt")
    final = _classifier_weights(
        load_checkpoint(tmp_path / "r" / "checkpoints" / "final.pt")["model"]
    )
    assert all(torch.equal(final[k], ck["model"][k]) for k in ck["model"])
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows if "eval" in r] == [0, 1, 2]
    # stage 2 alone, resumed in the same run, does not train another classifier
    mtime = (tmp_path / "r" / "classifier" / "classifier.pt").stat().st_mtime_ns
    train(_cfg(), out=tmp_path / "r", stage="2", **_kw(small))
    assert (tmp_path / "r" / "classifier" / "classifier.pt").stat().st_mtime_ns == mtime


def test_classifier_errors_are_one_line(small, tmp_path):
    with pytest.raises(CxrctxError, match=r"classifier stage"):
        train(_cfg(), out=tmp_path / "x", classifier=tmp_path / "nothing", **_kw(small))
    with pytest.raises(CxrctxError, match="--stage classifier trains"):
        train(_cfg(), out=tmp_path / "x", stage="classifier", classifier=tmp_path, **_kw(small))
    args = train_args(small, tmp_path / "y", "--classifier", str(small["rois"]))
    r = CliRunner().invoke(app, args)
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1 and "classifier" in r.output


def _cli(d: dict[str, Path], out: Path, *extra: str) -> list[str]:
    quick = ["--set", "max_steps=2", "--set", "classifier_epochs=1"]
    return train_args(d, out, "--no-progress", *quick, *extra)


def test_full_disk_in_the_crop_cache_is_one_line(small, tmp_path, monkeypatch):
    """np.savez in the crop cache hits ENOSPC: one line naming the cache, exit 2 (a user error, like every stage), no temp left."""
    import cxrctx.train.data as data_mod

    def full(path, **_):
        Path(path).write_bytes(b"PK\x03")  # a partial write before the disk filled
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(data_mod.np, "savez", full)
    r = CliRunner().invoke(app, _cli(small, tmp_path / "run"))
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert "No space left on device" in r.output and "crop cache" in r.output
    assert not list((tmp_path / "run" / "cache").rglob("*.tmp.npz"))


def test_read_only_out_is_one_line(small, tmp_path, monkeypatch):
    """--out on a read-only file system: one line naming the path, exit 2."""
    out = tmp_path / "ro" / "run"
    real_mkdir = Path.mkdir

    def ro_mkdir(self, *a, **kw):
        if str(self).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *a, **kw)

    monkeypatch.setattr(Path, "mkdir", ro_mkdir)
    r = CliRunner().invoke(app, _cli(small, out))
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert "Read-only file system" in r.output and str(out) in r.output.replace("\n", "")


# ----------------------------------------------------------------------------- effusion


@pytest.fixture(scope="module")
def effusion(tmp_path_factory) -> dict[str, Path]:
    """Synthetic studies with a pleural effusion as their only lesion, or no lesion at all
    (every other study's ROI rows are dropped); every third patient of each kind validates."""
    from trainer_fixtures import set_splits

    d = make_root(tmp_path_factory.mktemp("eff"), patients=60, size=96, seed=11, heldout_every=None)
    lab = pl.read_parquet(d["labels"] / "labels" / "part-00000.parquet")
    pos = lab.filter(pl.col("status") == "positive").group_by("id").agg(pl.col("lesion"))
    other = {int(i) for i, les in pos.iter_rows() if set(les) != {"pleural effusion"}}
    eff = {int(i) for i, les in pos.iter_rows() if set(les) == {"pleural effusion"}}
    for shard in sorted((d["rois"]).rglob("part-*.parquet")):
        df = pl.read_parquet(shard)
        rewrite_shard(d["rois"], shard, df.filter(~pl.col("study_id").is_in(list(other))))
    rois = pl.concat([pl.read_parquet(p) for p in sorted(d["rois"].rglob("part-*.parquet"))])
    kept = rois.select("subject_id", "study_id").unique()
    e_subj = sorted(set(kept.filter(pl.col("study_id").is_in(list(eff)))["subject_id"]))
    c_subj = sorted(set(kept["subject_id"]) - set(e_subj))
    set_splits(d["records"], validate=set(e_subj[::3]) | set(c_subj[::3]))
    d["effusion_ids"] = eff  # type: ignore[assignment]
    return d


def test_a_few_effusion_studies_teach_the_effusion_sentence(effusion, tmp_path):
    """Trained on a handful of effusion / no-effusion studies, the model writes an effusion
    sentence for held-out effusion images and not for most images without one (≈ 20 s on
    two free cores, so it stays in the default suite)."""
    from cxrctx.reportgen.evaluate import keyword_labels
    from cxrctx.reportgen.generate import generate

    cfg = make_config(
        "tiny",
        global_image_size=96,
        classifier_epochs=10,
        epochs_stage1=20,
        epochs_stage2=1,
        batch_size=8,
        checkpoint_every=10**6,
    )
    train(cfg, out=tmp_path / "run", **_kw(effusion))
    generate(tmp_path / "run", out=tmp_path / "gen", split="validate")
    gen = pl.read_parquet(tmp_path / "gen" / "generated" / "part-00000.parquet")
    said = keyword_labels(
        gen.select(pl.col("study_id").cast(pl.String).alias("id"), pl.col("report").alias("text"))
    ).filter((pl.col("lesion") == "pleural effusion") & (pl.col("status") == "positive"))
    says = {int(i) for i in said["id"]}
    eff = {int(s) for s in gen["study_id"]} & effusion["effusion_ids"]  # type: ignore[operator]
    clean = {int(s) for s in gen["study_id"]} - eff
    assert len(eff) >= 3 and len(clean) >= 3, (len(eff), len(clean))
    assert len(says & eff) >= 0.6 * len(eff), (sorted(says & eff), sorted(eff))
    assert len(says & clean) <= 0.3 * len(clean), (sorted(says & clean), len(clean))


# ----------------------------------------------------------------------------- renderer


def _raised(lesion: str, seed: int):
    """Pixels the lesion raised by > 0.15 over the same image without it (same anatomy)."""
    import numpy as np

    from cxrctx.synth.images import render

    base, _ = render(np.random.default_rng(seed), 128, 128, {})
    img, _ = render(np.random.default_rng(seed), 128, 128, {lesion: "right"})
    return (img - base) > 0.15


def test_renderer_draws_pneumonia_unlike_consolidation_and_nodule_unlike_mass():
    """Consistency check of the renderer: each pair is drawn distinctly (one homogeneous
    region vs several separate patches; a small spot vs a ~3× wider opacity)."""
    from scipy import ndimage

    for seed in range(5):
        cons, pneu = _raised("consolidation", seed), _raised("pneumonia", seed)
        nod, mass = _raised("nodule", seed), _raised("mass", seed)
        n_cons = ndimage.label(ndimage.binary_opening(cons))[1]
        n_pneu = ndimage.label(ndimage.binary_opening(pneu))[1]
        assert cons.sum() > 2 * pneu.sum() and n_pneu >= 2 and n_cons <= 3, (seed, n_cons, n_pneu)
        assert 0 < nod.sum() and mass.sum() > 5 * nod.sum(), (seed, nod.sum(), mass.sum())
