"""Hostile bundles: a downloaded release is untrusted input, and nothing reversible or
credentialed goes public. Each test crafts what an attacker (or a careless publisher)
would: engine options, paths, contents, cards, metadata, a killed run's leftovers."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import polars as pl
import pytest
from typer.testing import CliRunner

from cxrctx.cli import app
from cxrctx.errors import CxrctxError
from cxrctx.io import sha256_file, write_parquet
from cxrctx.release import info, make_release, rebuild, validate

runner = CliRunner()


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A synthetic root with ImaGenome scene graphs, records, rules and fake-model labels,
    ROIs, and two releases: rules-labelled with ROIs, and model-labelled."""
    from cxrctx.imagenome import build_rois
    from cxrctx.labeling import label_lesions
    from cxrctx.llm.spec import EngineSpec
    from cxrctx.mimic.build import build_priors
    from cxrctx.synth import synthesize

    b = tmp_path_factory.mktemp("hostile")
    synthesize(b / "mimic", patients=12, seed=2, images=True, imagenome=True, image_size=32,
               image_format="jpg")  # fmt: skip
    build_priors(b / "mimic", b / "records", image_ext="jpg", workers=1)
    label_lesions(b / "records", b / "labels", labeler="rules")
    build_rois(b / "mimic" / "imagenome", records=b / "records", out=b / "rois")
    make_release(
        b / "records", labels=b / "labels", rois=b / "rois", out=b / "rel", name="demo/ctx",
        version="1.0.0", formats=["srrg"],
    )  # fmt: skip
    model = b / "m" / "tiny.gguf"
    model.parent.mkdir()
    model.write_bytes(b"not a model")
    label_lesions(
        b / "records", b / "llm-labels", engine=EngineSpec(backend="fake", model=str(model))
    )
    make_release(b / "records", labels=b / "llm-labels", out=b / "rel-llm", name="demo/ctx",
                 version="1.0.0")  # fmt: skip
    return {"base": b, "root": b / "mimic", "model": model}


def _copy(made, tmp_path, name: str = "rel") -> Path:
    out = tmp_path / name
    shutil.copytree(made["base"] / name, out, symlinks=True)
    return out


def _manifest(bundle: Path, edit) -> None:
    p = bundle / "manifest.json"
    m = json.loads(p.read_text())
    edit(m)
    p.write_text(json.dumps(m, indent=2))


def _rewrite(bundle: Path, f: Path, df: pl.DataFrame) -> None:
    """Replace a data file AND its manifest entry, so only the content checks can object."""
    new = write_parquet(df, f)
    rel = f.relative_to(bundle).as_posix()

    def edit(m):
        for s in m["shards"]:
            if s["path"] == rel:
                s.update(rows=new.rows, sha256=new.sha256)

    _manifest(bundle, edit)


def _file(bundle: Path, table: str) -> Path:
    return next((bundle / "data" / table).glob("train-*.parquet"))


# ------------------------------------------------------------------ the label engine


class _Recorder(BaseHTTPRequestHandler):
    hits: ClassVar[list[dict]] = []

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        type(self).hits.append(
            {"auth": self.headers.get("Authorization"), "body": self.rfile.read(n)}
        )
        self.send_response(500)
        self.end_headers()

    def log_message(self, *a):
        pass


@pytest.fixture
def server():
    _Recorder.hits = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1", _Recorder.hits
    srv.shutdown()


def _crafted_engine(bundle: Path, base_url: str) -> None:
    """The label-lesions record of the public bundle now names the attacker's server."""

    def edit(m):
        cfg = m["extra"]["stages"]["label-lesions"]["config"]
        cfg.update(backend="openai", model="served", model_sha256=None)
        cfg["engine_options"] = {
            "backend": "openai", "model": "served", "base_url": base_url,
            "api_key_env": "AWS_SECRET_ACCESS_KEY", "allow_public_api": True,
        }  # fmt: skip

    _manifest(bundle, edit)


def test_rebuild_never_sends_reports_to_a_server_the_bundle_names(
    made, tmp_path, server, monkeypatch
):
    url, hits = server
    rel = _copy(made, tmp_path, "rel-llm")
    _crafted_engine(rel / "public", url)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    res = runner.invoke(
        app, ["rebuild", str(rel / "public"), str(made["root"]), "--out", str(tmp_path / "rb"),
              "--model", "served"],
    )  # fmt: skip
    assert hits == []
    assert res.exit_code == 2, res.output
    assert "labelled by openai model served" in res.output
    assert "very-secret-value" not in res.output


def test_rebuild_labels_with_the_callers_engine_only(made, tmp_path, server, monkeypatch):
    import importlib

    from cxrctx.llm.spec import EngineSpec

    rb = importlib.import_module("cxrctx.release.rebuild")
    url, hits = server
    rel = _copy(made, tmp_path, "rel-llm")
    _crafted_engine(rel / "public", url)
    seen = []
    monkeypatch.setattr(
        rb,
        "run_labels",
        lambda records, out, opts, engine, cache, progress=None: seen.append(engine),
    )
    mine = EngineSpec(backend="openai", model="served", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(CxrctxError):  # nothing labelled: the release step finds no labels
        rebuild(rel, made["root"], out=tmp_path / "rb", engine=mine)
    assert seen == [mine]
    assert seen[0].api_key_env == "OPENAI_API_KEY" and not seen[0].allow_public_api
    assert hits == []


def test_public_api_check_uses_the_users_flag_only(made, tmp_path):
    rel = _copy(made, tmp_path, "rel-llm")
    _crafted_engine(rel / "public", "https://api.openai.com/v1")
    res = runner.invoke(
        app, ["rebuild", str(rel / "public"), str(made["root"]), "--out", str(tmp_path / "rb"),
              "--backend", "openai", "--model", "served", "--base-url", "https://api.openai.com/v1"],
    )  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "is a public API (api.openai.com): refused" in res.output


def test_a_prompt_path_or_bad_option_in_the_bundle_is_refused(made, tmp_path):
    from cxrctx.llm.spec import EngineSpec

    rel = _copy(made, tmp_path, "rel-llm")
    _manifest(rel / "public", lambda m: m["extra"]["stages"]["label-lesions"]["config"].update(
        prompt_version="/etc/passwd"))  # fmt: skip
    engine = EngineSpec(backend="fake", model=str(made["model"]))
    with pytest.raises(CxrctxError, match=r"prompt_version ./etc/passwd. .*never a file"):
        rebuild(rel, made["root"], out=tmp_path / "rb", engine=engine)
    rel2 = _copy(made, tmp_path, "rel")
    _manifest(rel2 / "public", lambda m: m["extra"]["stages"]["build-priors"]["config"].update(
        reports_zip="../../../elsewhere.zip"))  # fmt: skip
    with pytest.raises(CxrctxError, match=r"reports zip '../../../elsewhere.zip' is refused"):
        rebuild(rel2, made["root"], out=tmp_path / "rb2")


# ------------------------------------------------------------------ paths


def _outside_shard(rel: Path, tmp_path: Path) -> tuple[str, Path]:
    """Move the first public studies file outside the bundle; return its old path."""
    f = _file(rel / "public", "studies")
    outside = tmp_path / "outside" / f.name
    outside.parent.mkdir()
    shutil.move(f, outside)
    return f.relative_to(rel / "public").as_posix(), outside


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_paths_that_leave_the_bundle_are_refused_everywhere(made, tmp_path, how):
    rel = _copy(made, tmp_path)
    old, outside = _outside_shard(rel, tmp_path)
    if how == "symlink":
        (rel / "public" / old).symlink_to(outside)
    else:
        new = os.path.relpath(outside, rel / "public") if how == "dotdot" else str(outside)
        _manifest(
            rel / "public", lambda m: [s.update(path=new) for s in m["shards"] if s["path"] == old]
        )
    rep = validate(rel / "public")
    assert any("refused" in p for p in rep.problems), rep.problems
    with pytest.raises(CxrctxError, match="refused"):
        info(rel)
    with pytest.raises(CxrctxError, match="refused"):
        rebuild(rel, made["root"], out=tmp_path / "rb")
    assert not (tmp_path / "rb").exists()


def test_recorded_input_and_credentialed_paths_stay_inside(made, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    rel = _copy(made, tmp_path)
    _manifest(rel / "public", lambda m: m["extra"]["stages"]["build-priors"]["inputs"].append(
        {"path": "../secret.txt", "size": 9, "sha256": "0" * 64}))  # fmt: skip
    assert any("'../secret.txt' refused" in p for p in validate(rel / "public").problems)
    with pytest.raises(CxrctxError, match="refused"):
        rebuild(rel, made["root"], out=tmp_path / "rb")
    rel2 = tmp_path / "rel2"
    shutil.copytree(made["base"] / "rel", rel2)
    _manifest(rel2 / "public", lambda m: m["extra"]["credentialed_files"].append(
        {"path": str(secret), "size": 9, "sha256": "0" * 64}))  # fmt: skip
    with pytest.raises(CxrctxError, match="refused"):
        rebuild(rel2, made["root"], out=tmp_path / "rb2")


# ------------------------------------------------------------------ contents


@pytest.mark.parametrize(
    ("table", "column", "value", "expect"),
    [
        (
            "studies",
            "report_sha256",
            "No acute cardiopulmonary process. 2150-03-04",
            "report_sha256",
        ),
        ("images", "path", "files/p10/John_Smith_03/04/2150.dcm", "'path'"),
        ("studies", "subject_id", 123, "'subject_id'"),
        ("images", "dicom_id", "../../etc/passwd", "'dicom_id'"),
        ("labels_long", "id", "Mr Smith", "'id'"),
    ],
)
def test_validate_checks_every_public_columns_contents(
    made, tmp_path, table, column, value, expect
):
    rel = _copy(made, tmp_path)
    f = _file(rel / "public", table)
    df = pl.read_parquet(f)
    df = df.with_columns(pl.lit(value, dtype=df.schema[column]).alias(column))
    _rewrite(rel / "public", f, df)
    rep = validate(rel / "public")
    assert any(expect in p and "its type does not allow" in p for p in rep.problems), rep.problems
    if isinstance(value, str) and "2150" in value:
        assert any("date-like value" in p for p in rep.problems), rep.problems


def test_a_path_of_another_study_is_caught(made, tmp_path):
    rel = _copy(made, tmp_path)
    f = _file(rel / "public", "images")
    df = pl.read_parquet(f)
    other = df["path"][1]
    df = df.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.lit(other))
                         .otherwise(pl.col("path")).alias("path"))  # fmt: skip
    assert df["study_id"][0] != df["study_id"][1] or df["dicom_id"][0] != df["dicom_id"][1]
    _rewrite(rel / "public", f, df)
    assert any("'path'" in p for p in validate(rel / "public").problems)


def test_a_date_in_the_manifest_or_a_hand_edited_card_is_caught(made, tmp_path):
    rel = _copy(made, tmp_path)
    _manifest(rel / "public", lambda m: m["extra"].update(note="seen 03/04/2150"))
    assert any("date-like value ('03/04/2150')" in p for p in validate(rel / "public").problems)
    rel2 = tmp_path / "rel2"
    shutil.copytree(made["base"] / "rel", rel2)
    card = rel2 / "public" / "README.md"
    card.write_text(card.read_text() + "\nPatient John Smith, chest pain.\n")

    def fix(m):
        for e in m["files"]:
            if e["path"] == "README.md":
                e.update(sha256=sha256_file(card), size=card.stat().st_size)

    _manifest(rel2 / "public", fix)
    rep = validate(rel2 / "public")
    assert any("README.md: differs from what the manifest renders" in p for p in rep.problems)


# ------------------------------------------------------------------ nothing reversible


def test_no_public_value_is_a_hash_of_a_short_text(made):
    """The only 64-hex values public are the sha256 of whole report files."""
    pub = made["base"] / "rel" / "public"
    files = {
        hashlib.sha256(p.read_bytes()).hexdigest() for p in (made["root"] / "files").rglob("*.txt")
    }
    seen = 0
    for f in pub.rglob("*.parquet"):
        df = pl.read_parquet(f)
        assert "text_sha256" not in df.columns, f
        for col, dtype in df.schema.items():
            if dtype == pl.String:
                hexes = set(
                    df[col].drop_nulls().filter(df[col].drop_nulls().str.contains("^[0-9a-f]{64}$"))
                )
                assert hexes <= files, (f, col)
                seen += len(hexes)
    assert seen > 0


def test_imagenome_boxes_are_credentialed_and_rebuilt_from_imagenome(made, tmp_path):
    rel = made["base"] / "rel"
    assert not (rel / "public" / "data" / "rois").exists()
    assert (rel / "credentialed" / "data" / "rois").is_dir()
    m = json.loads((rel / "public" / "manifest.json").read_text())
    assert m["extra"]["roi_source"]["name"] == "Chest ImaGenome Dataset"
    assert m["extra"]["roi_source"]["version"] == "1.0.0"
    assert "Chest ImaGenome Dataset 1.0.0" in (rel / "public" / "README.md").read_text()
    rep = rebuild(rel, made["root"], out=tmp_path / "rb", imagenome=made["root"] / "imagenome")
    assert rep.identical, (rep.differences[:3], rep.skipped)
    assert any(d.startswith("data/rois/") for d in
               [e["path"] for e in m["extra"]["credentialed_files"]])  # fmt: skip
    rep2 = rebuild(rel, made["root"], out=tmp_path / "rb2")
    assert not rep2.identical and "--imagenome" in rep2.skipped[0]


# ------------------------------------------------------------------ a killed release


def test_a_killed_release_leaves_no_text_behind(made, tmp_path):
    rel = _copy(made, tmp_path)
    (rel / ".cxrctx-run.json").exists() or pytest.fail("release marker expected")
    left = rel / ".staging-999999999-abc" / "credentialed" / "data" / "records"
    left.mkdir(parents=True)
    shutil.copy(_file(rel / "credentialed", "records"), left / "train-00000-of-00001.parquet")
    rep = validate(rel)
    assert any(".staging-999999999-abc: unfinished staging folder" in p for p in rep.problems)
    assert any("staging" in p for p in validate(rel / "public").problems)
    b = made["base"]
    make_release(b / "records", labels=b / "labels", rois=b / "rois", out=rel, name="demo/ctx",
                 version="1.0.0", formats=["srrg"])  # fmt: skip
    assert not list(rel.glob(".staging-*"))
    assert validate(rel).ok


# ------------------------------------------------------------------ metadata


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"name": "My Dataset!"}, "not a hub repo id"),
        ({"license": "not-a-licence"}, "not a hub licence id"),
        ({"version": "banana"}, "not a semantic version"),
        ({"card": {"task_categories": ["chest-xray"]}}, "not hub task categories"),
        ({"card": {"license_name": "Mine"}}, "needs both license_name and license_link"),
        (
            {"license": "cc-by-4.0", "card": {"license_link": "https://x.org/l"}},
            "go with --license other",
        ),
        ({"card": {"size_categories": ["huge"]}}, "size_categories"),
    ],
)
def test_release_metadata_follows_the_hubs_rules(made, tmp_path, kw, msg):
    b = made["base"]
    args = {"name": "demo/ctx", "version": "1.0.0", **kw}
    with pytest.raises(CxrctxError, match=msg):
        make_release(b / "records", out=tmp_path / "r", **args)
    assert not (tmp_path / "r" / "public").exists()


def test_card_metadata_from_a_file_is_recorded_and_passes_the_hub_card_parser(made, tmp_path):
    hub = pytest.importorskip("huggingface_hub")
    b = made["base"]
    meta = tmp_path / "card.toml"
    meta.write_text(
        'license_name = "Demo Licence"\nlicense_link = "https://example.org/licence"\n'
        'task_categories = ["image-to-text"]\ncitation = "@misc{demo, title={Demo}}"\n'
    )
    res = runner.invoke(app, [
        "release", "--records", str(b / "records"), "--out", str(tmp_path / "r"), "--name",
        "my-org/demo", "--version", "2.1.0-rc.1", "--card", str(meta), "--size-category", "1K<n<10K",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    for kind in ("public", "credentialed"):
        card = hub.DatasetCard.load(tmp_path / "r" / kind / "README.md")
        d = card.data.to_dict()
        assert d["license"] == "other" and d["license_name"] == "Demo Licence"
        assert d["license_link"] == "https://example.org/licence"
        assert d["task_categories"] == ["image-to-text"] and d["size_categories"] == ["1K<n<10K"]
        assert ("extra_gated_prompt" in d) == (kind == "credentialed")
        assert "@misc{demo, title={Demo}}" in card.text
        m = json.loads((tmp_path / "r" / kind / "manifest.json").read_text())
        assert m["config"]["card"]["license_name"] == "Demo Licence"
    assert validate(tmp_path / "r").ok
    res = runner.invoke(app, ["release", "--records", str(b / "records"), "--out", str(tmp_path / "r2"),
                              "--name", "x/y", "--version", "1.0.0", "--license", "banana"])  # fmt: skip
    assert (
        res.exit_code == 2
        and "not a hub licence id" in res.output
        and "Traceback" not in res.output
    )


# ------------------------------------------------------------------ Croissant, info


def test_croissant_has_every_column_and_every_record_set_loads(made):
    pytest.importorskip("mlcroissant")
    from cxrctx.release.croissant import readable_dataset

    for kind in ("public", "credentialed"):
        bundle = made["base"] / "rel" / kind
        doc = json.loads((bundle / "croissant.json").read_text())
        sets = {rs["@id"]: rs for rs in doc["recordSet"]}
        for folder in (bundle / "data").iterdir():
            cols = pl.read_parquet_schema(next(folder.glob("*.parquet")))
            assert [f["name"] for f in sets[folder.name]["field"]] == list(cols), folder
        with readable_dataset(bundle / "croissant.json") as ds:
            for rs, body in sets.items():
                rows = list(ds.records(record_set=rs))
                want = sum(
                    pl.read_parquet(f).height for f in (bundle / "data" / rs).glob("*.parquet")
                )
                assert len(rows) == want, rs
                assert set(rows[0]) == {f["@id"] for f in body["field"]}, rs
    rec = {f["name"]: f for f in sets["records"]["field"]}
    assert rec["images"]["isArray"] and {s["name"] for s in rec["images"]["subField"]} >= {
        "dicom_id",
        "path",
    }
    assert {s["name"] for s in rec["chexpert"]["subField"]} >= {"atelectasis", "cardiomegaly"}
    assert rec["chexpert"]["subField"][0]["dataType"] == "sc:Float"
    prior_images = {s["name"]: s for s in rec["priors"]["subField"]}["images"]
    assert prior_images["isArray"] and prior_images["subField"][0]["name"] == "dicom_id"
    roi = {f["name"]: f for f in sets["rois"]["field"]}["rois"]
    assert {s["name"] for s in roi["subField"]} >= {"name", "x1", "y1", "x2", "y2", "sentences"}


def test_croissant_missing_a_column_is_caught(made, tmp_path):
    pytest.importorskip("mlcroissant")
    rel = _copy(made, tmp_path)
    path = rel / "public" / "croissant.json"
    doc = json.loads(path.read_text())
    doc["recordSet"][0]["field"].pop()
    path.write_text(json.dumps(doc))
    _manifest(rel / "public", lambda m: [e.update(sha256=sha256_file(path), size=path.stat().st_size)
                                         for e in m["files"] if e["path"] == "croissant.json"])  # fmt: skip
    problems = validate(rel / "public").problems
    assert any("field studies/report_sha256 is None" in p for p in problems), problems


def test_info_on_a_release_shows_both_bundles(made):
    i = info(made["base"] / "rel")
    assert i.stage == "release-public" and i.bundles["credentialed"].stage == "release-credentialed"
    assert i.bundles["credentialed"].splits["all"]["studies"] == i.splits["all"]["studies"]
    res = runner.invoke(app, ["info", str(made["base"] / "rel")])
    assert res.exit_code == 0
    assert "release-public" in res.output and "release-credentialed" in res.output
    data = json.loads(runner.invoke(app, ["info", str(made["base"] / "rel"), "--json"]).output)
    assert data["bundles"]["credentialed"]["stage"] == "release-credentialed"


def test_hub_card_parser_catches_bad_metadata(tmp_path):
    pytest.importorskip("huggingface_hub")
    from cxrctx.release.card import hub_card_problems

    card = tmp_path / "README.md"
    card.write_text(
        "---\nlicense: other\ntask_categories:\n- chest-xray\nsize_categories:\n- huge\n"
        "configs:\n- config_name: my studies\n  data_files:\n  - split: train\n    path: x\n---\n"
    )
    problems = hub_card_problems(card)
    assert any("license other without license_name and license_link" in p for p in problems)
    assert any("'chest-xray', 'huge' not among the hub's categories" in p for p in problems)
    assert any("config 'my studies'" in p for p in problems)


@pytest.mark.parametrize(
    ("edit", "msg"),
    [
        (
            lambda m: m["extra"]["stages"].update({"label-lesions": "x"}),
            "label-lesions record is malformed",
        ),
        (
            lambda m: m["extra"]["stages"]["build-priors"]["inputs"].append(7),
            "malformed input file entry",
        ),
        (
            lambda m: m["extra"]["stages"]["build-priors"]["config"].update(max_priors="all"),
            "build-priors options",
        ),
        (lambda m: m["config"].update(name="../../evil"), "release config is not valid"),
    ],
)
def test_malformed_records_are_one_line_errors(made, tmp_path, edit, msg):
    rel = _copy(made, tmp_path)
    _manifest(rel / "public", edit)
    res = runner.invoke(
        app, ["rebuild", str(rel / "public"), str(made["root"]), "--out", str(tmp_path / "rb")]
    )
    assert res.exit_code == 2 and msg in res.output, res.output
    assert "Traceback" not in res.output
