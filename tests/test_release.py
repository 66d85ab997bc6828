"""`make_release`, `rebuild`, `info`, exports: public/credentialed bundles from a synthetic root."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from cxrctx.errors import CxrctxError
from cxrctx.io import open_stage, sha256_file, write_shards, write_stage_manifest
from cxrctx.release import info, make_release, rebuild, validate
from cxrctx.release.tables import PUBLIC_COLUMNS
from cxrctx.vocab import LESIONS, SECTIONS


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Synthetic root (12 patients: train, validate and test) → build-priors → fake labels.

    The label model is a local file given by absolute path: the release must record it by
    name and sha256 only."""
    from cxrctx.labeling import label_lesions
    from cxrctx.llm.spec import EngineSpec
    from cxrctx.mimic.build import build_priors
    from cxrctx.synth import synthesize

    base = tmp_path_factory.mktemp("release")
    root = base / "mimic"
    synthesize(root, patients=12, seed=2)
    model = base / "models" / "tiny-model.gguf"
    model.parent.mkdir()
    model.write_bytes(b"not really a model")
    build_priors(root, base / "records", workers=1)
    label_lesions(
        base / "records", base / "labels", engine=EngineSpec(backend="fake", model=str(model))
    )
    rel = base / "rel"
    make_release(
        base / "records", labels=base / "labels", out=rel, name="demo/ctx", version="1.0.0",
        formats=["srrg", "maira2", "jsonl"], target="findings+impression",
    )  # fmt: skip
    return {"base": base, "root": root, "model": model, "rel": rel}


def _read(folder: Path) -> pl.DataFrame:
    return pl.concat(
        [pl.read_parquet(f) for f in sorted(folder.glob("*.parquet"))], how="diagonal_relaxed"
    )


def test_public_bundle_holds_no_free_text(pipeline):
    rel = pipeline["rel"]
    records = _read(rel / "credentialed" / "data" / "records")
    texts = {t for s in SECTIONS for t in records[s].drop_nulls().to_list() if len(t) > 3}
    rationales = set(_read(rel / "credentialed" / "data" / "labels_long")["rationale"].to_list())
    assert texts and rationales
    files = sorted((rel / "public").rglob("*.parquet"))
    assert len(files) >= 8
    for f in files:
        df = pl.read_parquet(f)
        assert set(df.columns) <= set(PUBLIC_COLUMNS), (f, set(df.columns) - set(PUBLIC_COLUMNS))
        for col, dtype in df.schema.items():
            if dtype == pl.String:
                vals = set(df[col].drop_nulls().to_list())
                assert not vals & texts, (f, col)
                assert not vals & rationales, (f, col)
    for name in ("README.md", "croissant.json", "manifest.json"):
        body = (rel / "public" / name).read_text()
        assert not any(t in body for t in texts if len(t) > 20), name


def test_model_recorded_by_name_and_sha256_never_by_path(pipeline):
    rel, model = pipeline["rel"], pipeline["model"]
    for bundle in ("public", "credentialed"):
        for f in (rel / bundle).rglob("*"):
            if f.suffix in (".json", ".md", ".jsonl"):
                assert str(model.parent) not in f.read_text(), f
    prov = json.loads((rel / "public" / "manifest.json").read_text())["extra"]["stages"][
        "label-lesions"
    ]
    assert prov["config"]["model"] == "tiny-model.gguf"
    assert prov["config"]["model_sha256"] == sha256_file(model)
    long = _read(rel / "credentialed" / "data" / "labels_long")
    assert set(long["model"].to_list()) == {"tiny-model.gguf"}


def test_splits_are_named_and_mimic_validate_is_validation(pipeline):
    rel = pipeline["rel"]
    names = {f.name.split("-")[0] for f in (rel / "public" / "data" / "studies").glob("*.parquet")}
    assert names == {"train", "validation", "test"}
    val = pl.read_parquet(next((rel / "public" / "data" / "studies").glob("validation-*.parquet")))
    assert set(val["split"].to_list()) == {"validate"}
    card = (rel / "public" / "README.md").read_text()
    assert "  - split: validation\n    path: data/studies/validation-*.parquet" in card
    assert "MIMIC's `validate`" in card and "**`validation`**" in card


def test_card_states_target_sections_and_counts(pipeline):
    rel = pipeline["rel"]
    card = (rel / "credentialed" / "README.md").read_text()
    studies = _read(rel / "public" / "data" / "studies")
    both = studies.filter(pl.col("has_findings") & pl.col("has_impression")).height
    f_only = studies.filter(pl.col("has_findings") & ~pl.col("has_impression")).height
    assert "The exports use **findings+impression** as the target" in card
    assert f"{both:,} have findings and impression, {f_only:,} findings only" in card
    assert "## Known limitations" in card and "## Licence" in card
    assert card.startswith(
        "---\nlicense: other\nlicense_name: \"PhysioNet Credentialed Health Data License 1.5.0\"\n"
    )


def test_wide_labels_join_records_on_integer_study_id(pipeline):
    rel = pipeline["rel"]
    wide = _read(rel / "public" / "data" / "labels_wide")
    rec = _read(rel / "credentialed" / "data" / "records")
    assert wide.schema["study_id"] == rec.schema["study_id"] == pl.Int64
    assert wide["study_id"].n_unique() == wide.height
    joined = rec.join(wide, on="study_id", how="inner")
    assert joined.height == wide.height > 0
    assert {f"{x.replace(' ', '_')}_status" for x in LESIONS} <= set(wide.columns)
    long = _read(rel / "public" / "data" / "labels_long")
    assert long.height == 14 * wide.height


def test_datasets_loads_every_split_under_its_own_name(pipeline, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    rel = pipeline["rel"]
    for bundle, configs in (
        ("public", ["studies", "labels_wide"]),
        ("credentialed", ["records", "srrg"]),
    ):
        manifest = json.loads((rel / bundle / "manifest.json").read_text())
        for cfg in configs:
            ds = datasets.load_dataset(str(rel / bundle), cfg, cache_dir=str(tmp_path / "hf"))
            want = {}
            for s in manifest["shards"]:
                if s["path"].startswith(f"data/{cfg}/"):
                    split = Path(s["path"]).name.split("-")[0]
                    want[split] = want.get(split, 0) + s["rows"]
            assert {k: v.num_rows for k, v in ds.items()} == want, (bundle, cfg)
    assert set(want) == {"train", "validation", "test"}


def test_croissant_is_valid_croissant_1_1(pipeline):
    from cxrctx.release.croissant import validate_croissant

    rel = pipeline["rel"]
    for bundle in ("public", "credentialed"):
        doc = json.loads((rel / bundle / "croissant.json").read_text())
        assert doc["conformsTo"] == "http://mlcommons.org/croissant/1.1"
        shas = {d["contentUrl"]: d["sha256"] for d in doc["distribution"] if "sha256" in d}
        for path, sha in shas.items():
            assert sha256_file(rel / bundle / path) == sha
        pytest.importorskip("mlcroissant")
        assert validate_croissant(rel / bundle / "croissant.json") == []


def test_release_is_deterministic_and_refuses_a_non_empty_folder(pipeline, tmp_path):
    base = pipeline["base"]
    out = tmp_path / "again"
    make_release(
        base / "records", labels=base / "labels", out=out, name="demo/ctx", version="1.0.0",
        formats=["srrg", "maira2", "jsonl"], target="findings+impression",
    )  # fmt: skip
    for f in sorted((pipeline["rel"] / "public").rglob("*")):
        if f.is_file():
            assert (
                f.read_bytes()
                == (out / "public" / f.relative_to(pipeline["rel"] / "public")).read_bytes()
            ), f
    with pytest.raises(CxrctxError, match="not empty: holds the output of another release run"):
        make_release(base / "records", out=out, name="demo/ctx", version="2.0.0")
    assert (out / "public" / "manifest.json").is_file()  # the old release is intact


def test_release_refuses_wrong_stage_and_foreign_labels(pipeline, tmp_path):
    base = pipeline["base"]
    with pytest.raises(CxrctxError, match="a label-lesions output; expected build-priors"):
        make_release(base / "labels", out=tmp_path / "r", name="x", version="1.0.0")
    # labels of ids that are not records
    lab = _read(base / "labels" / "labels").with_columns(pl.lit("59999999").alias("id"))
    other = tmp_path / "other-labels"
    shards = write_shards(lab, other / "labels", 10_000, relative_to=other)
    write_stage_manifest(other, stage="label-lesions", schema_version=1, config={}, shards=shards)
    with pytest.raises(
        CxrctxError, match=r"other-labels: labels for 1 id\(s\) that are not records .*59999999"
    ):
        make_release(base / "records", labels=other, out=tmp_path / "r2", name="x", version="1.0.0")
    assert not (tmp_path / "r2" / "public").exists()


def _engine(pipeline):
    """The caller's own engine (a rebuild never takes it from the bundle)."""
    from cxrctx.llm.spec import EngineSpec

    return EngineSpec(backend="fake", model=str(pipeline["model"]))


def test_rebuild_reproduces_the_release_byte_for_byte(pipeline, tmp_path):
    rep = rebuild(
        pipeline["rel"] / "public",
        pipeline["root"],
        out=tmp_path / "rb",
        engine=_engine(pipeline),
    )
    assert rep.differences == [] and rep.identical
    assert rep.compared >= 30


def test_rebuild_needs_the_recorded_model(pipeline, tmp_path):
    with pytest.raises(
        CxrctxError, match=r"tiny-model.gguf \(sha256 [0-9a-f]{64}\): pass --backend fake --model PATH"
    ):
        rebuild(pipeline["rel"], pipeline["root"], out=tmp_path / "rb")


def test_rebuild_names_the_physionet_project_of_missing_files(pipeline, tmp_path):
    root = tmp_path / "mimic"
    shutil.copytree(pipeline["root"], root)
    (root / "mimic-cxr-2.0.0-split.csv.gz").unlink()
    shutil.rmtree(root / "files")
    with pytest.raises(CxrctxError) as e:
        rebuild(pipeline["rel"], root, out=tmp_path / "rb", engine=_engine(pipeline))
    msg = str(e.value)
    assert "\n" not in msg
    assert "mimic-cxr-2.0.0-split.csv.gz (from MIMIC-CXR-JPG" in msg
    assert "files/ with the reports (from MIMIC-CXR (" in msg
    assert not (tmp_path / "rb").exists()


def test_rebuild_reports_which_files_differ_and_why(pipeline, tmp_path):
    root = tmp_path / "mimic"
    shutil.copytree(pipeline["root"], root)
    rec = _read(pipeline["rel"] / "credentialed" / "data" / "records")
    row = rec.filter(pl.col("findings").is_not_null()).row(0, named=True)
    report = root / row["report_path"]
    report.write_text(report.read_text() + "\nADDENDUM: a different copy.\n")
    rep = rebuild(pipeline["rel"], root, out=tmp_path / "rb", engine=_engine(pipeline))
    assert not rep.identical
    assert any(d.path.startswith("credentialed/data/records/") for d in rep.differences)
    assert f"study {row['study_id']}: report text differs (sha256)" in rep.study_notes
    assert all("report text differs" in d.reason for d in rep.differences if "records" in d.path)


def test_info_describes_stage_folders_and_releases(pipeline):
    base = pipeline["base"]
    i = info(base / "records")
    assert i.stage == "build-priors" and set(i.splits) == {"train", "validation", "test", "all"}
    assert i.splits["all"]["studies"] == i.counts["records"]
    r = info(pipeline["rel"])
    assert r.stage == "release-public"
    assert r.splits["all"]["studies"] == i.splits["all"]["studies"]
    assert sum(r.splits["all"][f"positive:{x}"] for x in LESIONS) > 0
    lab = info(base / "labels")
    assert lab.stage == "label-lesions" and lab.notes


def test_structured_reports_fill_srrg_structured_report(pipeline, tmp_path):
    base = pipeline["base"]
    rec = open_stage(base / "records").read()
    ids = rec["study_id"].cast(pl.String).to_list()
    st = pl.DataFrame({
        "id": ids[:2], "structured_findings": ["Lungs and Airways:\n- Clear.", None],
        "structured_impression": ["1. Normal.", "1. Stable."],
    })  # fmt: skip
    sdir = tmp_path / "structured"
    shards = write_shards(st, sdir / "structured", 100, relative_to=sdir)
    write_stage_manifest(
        sdir, stage="structure-reports", schema_version=1, config={}, shards=shards
    )
    res = make_release(
        base / "records",
        structured=sdir,
        out=tmp_path / "r",
        name="x",
        version="1.0.0",
        formats=["srrg"],
    )
    srrg = _read(res.credentialed.dir / "data" / "srrg")
    got = dict(zip(srrg["id"].to_list(), srrg["structured_report"].to_list(), strict=True))
    assert got[ids[0]] == "FINDINGS:\nLungs and Airways:\n- Clear.\n\nIMPRESSION:\n1. Normal."
    assert got[ids[1]] == "IMPRESSION:\n1. Stable."
    assert got[ids[2]] is None
    assert validate(tmp_path / "r").ok


def test_export_mappings(pipeline):
    cred = pipeline["rel"] / "credentialed"
    rec = _read(cred / "data" / "records")
    srrg = _read(cred / "data" / "srrg")
    assert srrg.columns[:10] == [
        "id", "original_report", "structured_report", "findings_section", "impression_section",
        "history_section", "technique_section", "comparison_section", "exam_type_section", "image_paths",
    ]  # fmt: skip
    assert srrg.height == rec.height and srrg["structured_report"].null_count() == srrg.height
    by_id = {r["study_id"]: r for r in rec.iter_rows(named=True)}
    for row in srrg.head(20).iter_rows(named=True):
        r = by_id[int(row["id"])]
        assert row["findings_section"] == (r["findings"].strip() if r["findings"] else None)
        assert row["image_paths"] == [i["path"] for i in r["images"]]
        if r["findings"]:
            assert f"FINDINGS: {r['findings'].strip()}" in row["original_report"]
    maira = _read(cred / "data" / "maira2")
    for row in maira.iter_rows(named=True):
        r = by_id[row["study_id"]]
        frontal = [i["path"] for i in r["images"] if i["view_group"] == "frontal"]
        assert row["current_frontal"] == (frontal[0] if frontal else None)
        if r["priors"]:
            p = r["priors"][0]
            pf = [i["path"] for i in p["images"] if i["view_group"] == "frontal"]
            assert row["prior_frontal"] == (pf[0] if pf else None)
        else:
            assert row["prior_frontal"] is None and row["prior_report"] is None
        want = [
            f"{h}: {r[s].strip()}"
            for h, s in (("FINDINGS", "findings"), ("IMPRESSION", "impression"))
            if r[s] and r[s].strip()
        ]
        assert row["target"] == ("\n\n".join(want) or None)
        assert row["target_section"] == "findings+impression"
    lines = [
        json.loads(x)
        for f in sorted((cred / "exports" / "jsonl").glob("*.jsonl"))
        for x in f.read_text().splitlines()
    ]
    assert len(lines) == rec.height
    for row in lines:
        r = by_id[row["study_id"]]
        if r["priors"]:
            assert f"PRIOR STUDY ({r['priors'][0]['days_before']} days earlier):" in row["context"]
        else:
            assert row["context"].endswith("PRIOR STUDY: none")
        assert (
            row["instruction"]
            == "Write the findings and impression section of this chest X-ray report."
        )


def test_roi_boxes_are_credentialed_only():
    """Chest ImaGenome is itself credentialed: no public column may hold its boxes."""
    assert "rois" not in PUBLIC_COLUMNS and "text_sha256" not in PUBLIC_COLUMNS
