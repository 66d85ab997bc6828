"""Small synthetic roots for the trainer tests: images + scene graphs + truth + records + ROIs."""

from __future__ import annotations

from pathlib import Path

import polars as pl


def resplit(records: Path, heldout_every: int = 4) -> None:
    """Move every `heldout_every`-th patient to 'validate' and the next one to 'test' (MIMIC's split is ~98% train)."""
    from cxrctx.io import read_manifest, read_shards, write_manifest, write_shards

    recs = read_shards(records / "records")
    subjects = sorted(recs["subject_id"].unique().to_list())
    val = set(subjects[::heldout_every])
    test = set(subjects[1 :: heldout_every * 2])
    recs = recs.with_columns(
        pl.when(pl.col("subject_id").is_in(list(val)))
        .then(pl.lit("validate"))
        .when(pl.col("subject_id").is_in(list(test)))
        .then(pl.lit("test"))
        .otherwise(pl.lit("train"))
        .alias("split")
    )
    infos = write_shards(recs, records / "records", 1_000_000, relative_to=records)
    m = read_manifest(records / "manifest.json")  # keep the stage folder consistent
    write_manifest(m.model_copy(update={"shards": infos}), records / "manifest.json")


def set_splits(records: Path, *, validate: set[int], test: frozenset[int] = frozenset()) -> None:
    """Put the given patients in 'validate' / 'test' and everyone else in 'train'."""
    from cxrctx.io import read_manifest, read_shards, write_manifest, write_shards

    recs = read_shards(records / "records")
    recs = recs.with_columns(
        pl.when(pl.col("subject_id").is_in(list(validate)))
        .then(pl.lit("validate"))
        .when(pl.col("subject_id").is_in(list(test)))
        .then(pl.lit("test"))
        .otherwise(pl.lit("train"))
        .alias("split")
    )
    infos = write_shards(recs, records / "records", 1_000_000, relative_to=records)
    m = read_manifest(records / "manifest.json")
    write_manifest(m.model_copy(update={"shards": infos}), records / "manifest.json")


def rewrite_shard(stage_dir: Path, shard: Path, df: pl.DataFrame) -> None:
    """Replace one shard of a stage folder and its manifest entry, as a producer would (a
    consumer refuses a shard whose sha256 differs from its manifest)."""
    from cxrctx.io import read_manifest, write_manifest, write_parquet

    info = write_parquet(df, shard).model_copy(update={"path": str(shard.relative_to(stage_dir))})
    m = read_manifest(stage_dir / "manifest.json")
    shards = [info if s.path == info.path else s for s in m.shards]
    write_manifest(m.model_copy(update={"shards": shards}), stage_dir / "manifest.json")


def make_root(
    tmp: Path,
    *,
    patients: int = 40,
    size: int = 96,
    image_format: str = "jpg",
    seed: int = 0,
    heldout_every: int | None = 4,
) -> dict[str, Path]:
    """The project's generator (`cxrctx synth --images --imagenome`) → records → ROIs."""
    from cxrctx.imagenome import build_rois
    from cxrctx.mimic.build import build_priors
    from cxrctx.synth import synthesize

    root = tmp / "root"
    synthesize(
        root,
        patients=patients,
        seed=seed,
        images=True,
        imagenome=True,
        image_size=size,
        image_format=image_format,
        dicom=image_format != "jpg",
    )
    build_priors(
        root, tmp / "priors", image_ext="jpg" if image_format == "jpg" else "dcm", workers=1
    )
    if heldout_every:
        resplit(tmp / "priors", heldout_every)
    build_rois(root / "imagenome", records=tmp / "priors", out=tmp / "rois")
    return {"root": root, "records": tmp / "priors", "rois": tmp / "rois", "labels": root / "truth"}


def train_args(d: dict[str, Path], out: Path, *extra: str) -> list[str]:
    """`cxrctx train` arguments over a fixture's records, labels, ROIs and images."""
    inputs = ["--records", str(d["records"]), "--labels", str(d["labels"])]
    inputs += ["--rois", str(d["rois"]), "--images", str(d["root"])]
    return ["train", *inputs, "--out", str(out), *extra]
