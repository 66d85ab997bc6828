"""build-rois: the 11 ROIs, box cleaning, sentences, abnormal flag, rejects that reconcile."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from cxrctx.cli import app
from cxrctx.errors import CxrctxError
from cxrctx.imagenome import build_rois, clean_box, parse_scene_graph
from cxrctx.vocab import ROIS, lesion_rois


def test_clean_box():
    assert clean_box(10, 10, 10, 50, 100, 100) == (None, False, "zero-area box")
    assert clean_box(200, 10, 300, 50, 100, 100)[2] == "box outside the image"
    assert clean_box(-20, -5, 50, 60, 100, 100) == ((0.0, 0.0, 50, 60), True, "")
    assert clean_box(50, 60, 10, 20, 100, 100) == ((10, 20, 50, 60), False, "")  # swapped corners
    assert clean_box(-20, 5, 50, 60, None, None) == (
        (0.0, 5, 50, 60),
        True,
        "",
    )  # size unknown: clip at 0 only


def _graph(drop: str | None = None, **box_over) -> dict:
    objs = []
    for i, r in enumerate(ROIS):
        if r == drop:
            continue
        b = box_over.get(r.replace(" ", "_"), (10 + i, 20, 60 + i, 80))
        objs.append(
            {
                "bbox_name": r,
                "original_x1": b[0],
                "original_y1": b[1],
                "original_x2": b[2],
                "original_y2": b[3],
            }
        )
    objs.append(
        {
            "bbox_name": "trachea",
            "original_x1": 0,
            "original_y1": 0,
            "original_x2": 0,
            "original_y2": 0,
        }
    )
    atts = [
        {
            "bbox_name": "left lung",
            "phrases": ["Small left effusion.", "Small  left effusion.", "No pneumothorax."],
            "attributes": [
                ["disease|yes|pleural effusion", "nlp|yes|abnormal"],
                ["nlp|yes|abnormal"],
                ["nlp|yes|normal"],
            ],
        },
        {
            "bbox_name": "cardiac silhouette",
            "phrases": ["Heart size is normal."],
            "attributes": [["nlp|yes|normal"]],
        },
    ]
    return {"objects": objs, "attributes": atts}


def test_parse_scene_graph_keeps_the_11_rois_in_order():
    rois, why, _ = parse_scene_graph(_graph(), width=100, height=100)
    assert why == "" and [r["name"] for r in rois] == list(ROIS)
    left = rois[0]
    assert (
        left["sentences"] == ["Small left effusion.", "No pneumothorax."]
        and left["abnormal"] is True
    )
    assert rois[-1]["sentences"] == ["Heart size is normal."] and rois[-1]["abnormal"] is False
    assert rois[1]["sentences"] == [] and rois[1]["abnormal"] is False


def test_parse_scene_graph_reasons():
    assert (
        "missing ROI 'mediastinum'"
        in parse_scene_graph(_graph(drop="mediastinum"), width=100, height=100)[1]
    )
    assert (
        "zero-area" in parse_scene_graph(_graph(left_lung=(5, 5, 5, 50)), width=100, height=100)[1]
    )
    assert (
        "outside"
        in parse_scene_graph(_graph(left_lung=(150, 5, 190, 50)), width=100, height=100)[1]
    )
    rois, _, _ = parse_scene_graph(_graph(left_lung=(-10, 5, 190, 50)), width=100, height=100)
    assert rois[0]["clipped"] and (rois[0]["x1"], rois[0]["x2"]) == (0.0, 100)
    assert (
        parse_scene_graph({"nothing": 1}, width=1, height=1)[1]
        == "scene graph has no objects[] list"
    )


def test_lesion_rois_map():
    assert lesion_rois("pleural effusion", "right") == [
        "right lung",
        "right lower lung zone",
        "right costophrenic angle",
    ]
    assert lesion_rois("cardiomegaly", "left") == ["cardiac silhouette"]
    assert len(lesion_rois("edema", "not mentioned")) == 4


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> dict[str, Path]:
    from cxrctx.mimic.build import build_priors
    from cxrctx.synth import synthesize

    tmp = tmp_path_factory.mktemp("rois")
    synthesize(
        tmp / "root",
        patients=12,
        seed=9,
        images=True,
        imagenome=True,
        image_size=48,
        image_format="jpg",
    )
    build_priors(tmp / "root", tmp / "priors", image_ext="jpg", workers=1)
    return {"root": tmp / "root", "records": tmp / "priors", "tmp": tmp}


def test_build_rois_rejects_reconcile_and_are_deterministic(root, tmp_path):
    sg = root["root"] / "imagenome" / "silver_dataset" / "scene_graph"
    work = tmp_path / "sg" / "silver_dataset" / "scene_graph"
    work.mkdir(parents=True)
    files = sorted(sg.glob("*.json"))
    for f in files:
        (work / f.name).write_bytes(f.read_bytes())
    # inject: one missing scene graph, one unreadable, one without a ROI, one zero-area, one clipped
    (work / files[0].name).unlink()
    (work / files[1].name).write_text("{ not json")
    for f, mutate in ((files[2], "drop"), (files[3], "zero"), (files[4], "clip")):
        g = json.loads((work / f.name).read_text())
        if mutate == "drop":
            g["objects"] = [o for o in g["objects"] if o["bbox_name"] != "cardiac silhouette"]
        for o in g["objects"]:
            if o["bbox_name"] == "mediastinum" and mutate == "zero":
                o["original_x2"] = o["original_x1"]
            if o["bbox_name"] == "right lung" and mutate == "clip":
                o["original_x1"] = -100
        (work / f.name).write_text(json.dumps(g))
    res = build_rois(tmp_path / "sg", records=root["records"], out=tmp_path / "out")
    c = res.counts
    assert c["images_considered"] == c["images_written"] + c["images_rejected"]
    assert c["images_in_records"] == c["images_considered"] + c["skipped_non_frontal"]
    rej = pl.read_parquet(tmp_path / "out" / "rejects.parquet")
    reasons = " | ".join(rej["reason"].to_list())
    for needle in (
        "no scene graph",
        "unreadable scene graph",
        "missing ROI 'cardiac silhouette'",
        "zero-area",
    ):
        assert needle in reasons, reasons
    assert c["boxes_clipped"] >= 1
    df = pl.read_parquet(tmp_path / "out" / "rois" / "part-00000.parquet")
    assert df["dicom_id"].is_unique().all() and df["dicom_id"].to_list() == sorted(
        df["dicom_id"].to_list()
    )
    assert all(len(r) == 11 for r in df["rois"].to_list())
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert man["counts"]["images_rejected"] == rej.height
    # same inputs ⇒ same bytes
    build_rois(tmp_path / "sg", records=root["records"], out=tmp_path / "out2")
    for rel in ("rois/part-00000.parquet", "rejects.parquet", "manifest.json"):
        a, b = (tmp_path / "out" / rel).read_bytes(), (tmp_path / "out2" / rel).read_bytes()
        assert a == b, rel


def test_build_rois_bad_input(root, tmp_path):
    with pytest.raises(CxrctxError, match="no such directory"):
        build_rois(tmp_path / "missing", records=root["records"], out=tmp_path / "o")
    with pytest.raises(CxrctxError, match="no records shards"):
        build_rois(root["root"] / "imagenome", records=tmp_path, out=tmp_path / "o")
    r = CliRunner().invoke(
        app,
        [
            "build-rois",
            str(tmp_path / "missing"),
            "--records",
            str(root["records"]),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert r.exit_code == 2 and "no such directory" in r.output
    r = CliRunner().invoke(
        app,
        [
            "build-rois",
            str(root["root"] / "imagenome"),
            "--records",
            str(root["records"]),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert r.exit_code == 0 and "images written" in r.output
