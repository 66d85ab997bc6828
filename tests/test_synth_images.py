"""Synthetic radiographs show the truth's lesions where it says; scene graphs match the anatomy."""

from __future__ import annotations

import json

import numpy as np
import polars as pl

from cxrctx.synth.images import EXTRA_REGIONS, _rng, render, sentence_rois
from cxrctx.vocab import ROIS


def _mean(img: np.ndarray, box) -> float:
    h, w = img.shape
    x1, y1, x2, y2 = box
    return float(img[int(y1 * h) : int(y2 * h), int(x1 * w) : int(x2 * w)].mean())


def _render(pos, key="x"):
    return render(_rng(0, key), 160, 140, pos)


def test_cardiomegaly_widens_the_cardiac_silhouette():
    _, normal = _render({})
    _, big = _render({"cardiomegaly": "not mentioned"})
    wn = normal["cardiac silhouette"][2] - normal["cardiac silhouette"][0]
    wb = big["cardiac silhouette"][2] - big["cardiac silhouette"][0]
    assert wb > 1.5 * wn


def test_effusion_whitens_its_costophrenic_angle_only():
    base, b0 = _render({})
    eff, b1 = _render({"pleural effusion": "left"})
    left, right = "left costophrenic angle", "right costophrenic angle"
    assert _mean(eff, b1[left]) > _mean(base, b0[left]) + 0.15
    assert abs(_mean(eff, b1[right]) - _mean(base, b0[right])) < 0.02


def test_pneumothorax_darkens_the_lung_on_its_side():
    base, b0 = _render({})
    ptx, b1 = _render({"pneumothorax": "right"})

    def upper(b):
        x1, y1, x2, y2 = b
        return (x1, y1, x2, (y1 + y2) / 2)

    assert _mean(ptx, upper(b1["right lung"])) < _mean(base, upper(b0["right lung"])) - 0.04
    assert abs(_mean(ptx, b1["left lung"]) - _mean(base, b0["left lung"])) < 0.01


def test_opacities_and_edema_brighten_the_lungs():
    base, b0 = _render({})
    for lesion, loc, roi in (
        ("consolidation", "right", "right lower lung zone"),
        ("mass", "left", "left lung"),
        ("edema", "bilateral", "left hilar structures"),
    ):
        img, b = _render({lesion: loc})
        assert _mean(img, b[roi]) > _mean(base, b0[roi]) + 0.01, lesion


def test_sentence_rois_follow_lesion_and_side():
    assert sentence_rois("There is a small left pleural effusion.") == [
        "left lung",
        "left lower lung zone",
        "left costophrenic angle",
    ]
    assert sentence_rois("The heart is moderately enlarged.") == ["cardiac silhouette"]
    assert sentence_rois("Comparison is made to the prior study.") == []


def test_generator_writes_images_and_scene_graphs(tmp_path):
    import pydicom
    from PIL import Image

    from cxrctx.synth import synthesize

    s = synthesize(
        tmp_path / "r",
        patients=10,
        seed=2,
        images=True,
        imagenome=True,
        image_size=64,
        image_format="both",
        dicom=True,
    )
    c = s.image_files
    assert c["images_dicom"] == c["images_jpg"] == s.images
    meta = pl.read_csv(tmp_path / "r" / "mimic-cxr-2.0.0-metadata.csv.gz", infer_schema=False)
    frontal = meta.filter(pl.col("ViewPosition").is_in(["PA", "AP"]))
    assert c["scene_graphs"] == frontal.height
    row = frontal.row(0, named=True)
    rel = (
        f"files/p{row['subject_id'][:2]}/p{row['subject_id']}/s{row['study_id']}/{row['dicom_id']}"
    )
    ds = pydicom.dcmread(tmp_path / "r" / f"{rel}.dcm")
    jpg = np.asarray(Image.open(tmp_path / "r" / f"{rel}.jpg"))
    assert max(ds.pixel_array.shape) == 64 and jpg.shape == ds.pixel_array.shape
    assert ds.ViewPosition == row["ViewPosition"] and ds.StudyDate == row["StudyDate"]
    sg = json.loads(
        (
            tmp_path
            / "r"
            / "imagenome"
            / "silver_dataset"
            / "scene_graph"
            / f"{row['dicom_id']}_SceneGraph.json"
        ).read_text()
    )
    assert {o["bbox_name"] for o in sg["objects"]} <= {*ROIS, *EXTRA_REGIONS}
    # every 40th frontal image from the 7th (in dicom_id order) gets one defect, cycling
    # missing ROI, zero-area box, box outside the image, box to clip; the others are complete
    graphs = sorted(
        (tmp_path / "r" / "imagenome" / "silver_dataset" / "scene_graph").glob("*.json")
    )
    n = len(graphs)
    assert n == c["scene_graphs"] >= 7
    defective = [k for k in range(1, n + 1) if k % 40 == 7]
    assert c["scene_graph_defects"] == len(defective)
    missing = [k for k in defective if (k // 40) % 4 == 0]
    incomplete = [
        k
        for k, g in enumerate(graphs, 1)
        if {o["bbox_name"] for o in json.loads(g.read_text())["objects"]} != {*ROIS, *EXTRA_REGIONS}
    ]
    assert incomplete == missing
    report = " ".join((tmp_path / "r" / f"{rel.rsplit('/', 1)[0]}.txt").read_text().split())
    phrases = [ph for a in sg["attributes"] for ph in a["phrases"]]
    assert all(ph in report for ph in phrases)
    for o in sg["objects"]:
        assert {"original_x1", "original_y1", "original_x2", "original_y2"} <= o.keys()
    assert all(
        isinstance(a["phrases"], list) and len(a["attributes"]) == len(a["phrases"])
        for a in sg["attributes"]
    )


def test_images_are_deterministic(tmp_path):
    from cxrctx.synth import synthesize

    for name in ("a", "b"):
        synthesize(
            tmp_path / name,
            patients=3,
            seed=4,
            images=True,
            imagenome=True,
            image_size=48,
            image_format="jpg",
        )
    files = sorted(
        p.relative_to(tmp_path / "a")
        for p in (tmp_path / "a").rglob("*")
        if p.suffix in (".jpg", ".json")
    )
    assert files
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_rendered_dicom_headers_equal_the_metadata_csv(tmp_path):
    import csv
    import gzip

    import pydicom

    from cxrctx.synth import synthesize

    root = tmp_path / "root"
    synthesize(
        root, patients=5, seed=3, dicom=True, images=True, image_size=64, image_format="both"
    )
    with gzip.open(root / "mimic-cxr-2.0.0-metadata.csv.gz", "rt") as f:
        rows = list(csv.DictReader(f))
    assert rows
    for r in rows:
        s = r["subject_id"]
        path = root / "files" / f"p{s[:2]}" / f"p{s}" / f"s{r['study_id']}" / f"{r['dicom_id']}.dcm"
        ds = pydicom.dcmread(path)
        want = (int(r["Rows"]), int(r["Columns"]))
        assert (int(ds.Rows), int(ds.Columns)) == want
        assert ds.pixel_array.shape == want
        assert max(want) == 64


def test_imagenome_without_images_writes_scene_graphs_only(tmp_path):
    """Scene graphs alone: no pictures, and the boxes equal those of a run with pictures."""
    from cxrctx.synth import synthesize

    only = synthesize(tmp_path / "g", patients=4, seed=6, imagenome=True, image_size=32)
    both = synthesize(
        tmp_path / "p",
        patients=4,
        seed=6,
        images=True,
        imagenome=True,
        image_size=32,
        image_format="jpg",
    )
    assert only.image_files["images_dicom"] == only.image_files["images_jpg"] == 0
    assert not list((tmp_path / "g" / "files").rglob("*.dcm"))
    assert not list((tmp_path / "g" / "files").rglob("*.jpg"))
    graphs = sorted((tmp_path / "g" / "imagenome").rglob("*.json"))
    assert graphs and len(graphs) == only.image_files["scene_graphs"]
    for g in graphs:
        twin = tmp_path / "p" / g.relative_to(tmp_path / "g")
        assert g.read_bytes() == twin.read_bytes()
    assert both.image_files["images_jpg"] == both.images
