"""`make_release`: stage outputs → a `public/` and a `credentialed/` bundle.

Both bundles are written into a staging folder inside OUT and renamed into place only when
complete, so a failed run leaves nothing half-written. Every input stage folder is opened
with `open_stage` (stage name, schema version, sha256 of every shard). The output is a
pure function of the inputs' bytes and the release config: no timestamps, no local paths,
so `rebuild` can reproduce it byte for byte.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from cxrctx import __version__
from cxrctx.errors import CxrctxError
from cxrctx.io import (
    Stage,
    atomic_write_text,
    config_hash,
    file_entry,
    input_file,
    open_stage,
    sha256_bytes,
    stage_inputs,
    write_stage_manifest,
)
from cxrctx.models import InputFile, Manifest, ShardInfo
from cxrctx.output_policy import prepare_output
from cxrctx.progress import as_callback, progress_arg
from cxrctx.release import tables as T
from cxrctx.release.card import render_card
from cxrctx.release.croissant import build_croissant
from cxrctx.release.exports import export_table, write_jsonl_split_files
from cxrctx.release.info import split_summary
from cxrctx.release.meta import CardMetadata, ReleaseConfig, size_category
from cxrctx.resources import read_bytes

RELEASE_SCHEMA_VERSION = 1
STAGING_PREFIX = ".staging-"
#: Where the ROI boxes come from: the public bundle names it, `rebuild --imagenome` recomputes.
ROI_SOURCE = {
    "name": "Chest ImaGenome Dataset",
    "version": "1.0.0",
    "url": "https://physionet.org/content/chest-imagenome/1.0.0/",
    "access": "PhysioNet credentialed (the boxes are in the credentialed bundle only)",
    "rebuild": "cxrctx rebuild public/ MIMIC_ROOT --imagenome CHEST_IMAGENOME_DIR --out DIR",
}


@dataclass
class Bundle:
    """One written bundle: its folder, tables (name → files) and manifest."""

    kind: str
    dir: Path
    tables: dict[str, list[ShardInfo]] = field(default_factory=dict)
    manifest: Manifest | None = None


@dataclass
class ReleaseResult:
    out_dir: Path
    public: Bundle
    credentialed: Bundle
    summary: dict[str, dict[str, int]]
    config: ReleaseConfig


@dataclass
class Inputs:
    """The checked input stages and their main tables."""

    records: Stage
    rec: pl.DataFrame
    labels: Stage | None = None
    lab: pl.DataFrame | None = None
    rois: Stage | None = None
    roi: pl.DataFrame | None = None
    structured: pl.DataFrame | None = None


# ------------------------------------------------------------------- inputs


def _same_source(st: Stage, records: Stage, what: str) -> None:
    """A labels/ROI stage must have read exactly these records shards."""
    have = {s.sha256 for s in records.manifest.shards}
    used = {i.sha256 for i in st.manifest.inputs}
    if used and not used <= have:
        raise CxrctxError(
            f"{st.manifest_paths[0]}: these {what} were made from another build-priors output "
            f"(input checksums differ from {records.dir})"
        )


def load_inputs(
    records: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    rois: str | os.PathLike | None = None,
    structured: str | os.PathLike | None = None,
) -> Inputs:
    """Open and check every input stage folder (one-line errors name the bad file)."""
    rst = open_stage(records, "build-priors")
    inp = Inputs(rst, rst.read())
    if labels is not None:
        inp.labels = open_stage(labels, "label-lesions")
        _same_source(inp.labels, rst, "labels")
        inp.lab = inp.labels.read()
    if rois is not None:
        inp.rois = open_stage(rois, "build-rois")
        _same_source(inp.rois, rst, "ROIs")
        inp.roi = inp.rois.read()
    if structured is not None:
        sst = open_stage(structured, "structure-reports")
        df = sst.read()
        need = ("id", "structured_findings", "structured_impression")
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise CxrctxError(f"{sst.dir}: structured reports lack column(s) {', '.join(missing)}")
        inp.structured = df.select(pl.col("id").cast(pl.String), *need[1:])
    return inp


# ------------------------------------------------------------------- provenance


def _scrub(v: Any) -> Any:
    """Drop local absolute paths from provenance (keep the file name)."""
    if isinstance(v, dict):
        return {k: _scrub(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_scrub(x) for x in v]
    if isinstance(v, str) and (os.path.isabs(v) or v.startswith("~")):
        return Path(v).name
    return v


def stage_provenance(st: Stage) -> dict[str, Any]:
    """A stage manifest as recorded in a release: no local paths, model by name + sha256."""
    m = st.manifest.model_dump(mode="json")
    cfg = dict(m["config"])
    if "model" in cfg:
        model = str(cfg["model"])
        cfg["model"] = T.model_name(model)
        p = Path(model)
        cfg["model_sha256"] = input_file(p).sha256 if p.is_file() else None
    cfg.pop("input", None)
    m["config"] = cfg
    m["extra"] = {k: v for k, v in m["extra"].items() if k != "provenance"}
    return _scrub(m)


def _input_files(inp: Inputs) -> list[InputFile]:
    return [
        f for st in (inp.records, inp.labels, inp.rois) if st is not None for f in stage_inputs(st)
    ]


def schema_hashes() -> dict[str, str]:
    """sha256 of each published JSON Schema this cxrctx writes data against."""
    names = ("record", "label_row", "lesion_answer", "roi_row", "manifest")
    out = {}
    for n in names:
        try:
            out[f"{n}.schema.json"] = sha256_bytes(read_bytes("schemas", f"{n}.schema.json"))
        except CxrctxError:
            continue
    return out


# ------------------------------------------------------------------- bundles


def _credentialed_tables(inp: Inputs, cfg: ReleaseConfig) -> dict[str, pl.DataFrame]:
    out: dict[str, pl.DataFrame] = {"records": inp.rec}
    if inp.lab is not None:
        src = str(inp.labels.dir) if inp.labels else "labels"
        long = T.labels_long(inp.lab, inp.rec, source=src, public=False)
        out["labels_long"] = long
        out["labels_wide"] = T.labels_wide(long)
    if inp.roi is not None:
        out["rois"] = T.rois_table(inp.roi)
    for fmt in cfg.formats:
        out[fmt] = export_table(fmt, inp.rec, target=cfg.target, structured=inp.structured)
    return out


def _public_tables(inp: Inputs) -> dict[str, pl.DataFrame]:
    out = {"studies": T.public_studies(inp.rec), "images": T.public_images(inp.rec)}
    if inp.lab is not None:
        src = str(inp.labels.dir) if inp.labels else "labels"
        long = T.labels_long(inp.lab, inp.rec, source=src, public=True)
        out["labels_long"] = long
        out["labels_wide"] = T.labels_wide(long)
    return out


def _write_tables(b: Bundle, frames: dict[str, pl.DataFrame], cfg: ReleaseConfig) -> None:
    for name, df in frames.items():
        if name == "jsonl":
            # Not a card config: the hub infers one builder per repository (Parquet here).
            b.tables[name] = write_jsonl_split_files(df, b.dir / "exports" / name, b.dir)
        else:
            b.tables[name] = T.write_split_files(
                df, b.dir / "data" / name, b.dir, cfg.rows_per_file
            )


def _is_data(infos: list[ShardInfo]) -> bool:
    return bool(infos) and infos[0].path.startswith("data/")


def _finish_bundle(
    b: Bundle,
    inp: Inputs,
    cfg: ReleaseConfig,
    summary: dict[str, dict[str, int]],
    extra: dict[str, Any],
) -> None:
    """Card, croissant.json, then the manifest (last: a bundle without one is unfinished).

    Tables are put in manifest order (data/ then exports/), so `validate` can re-render the
    card and croissant.json from the manifest alone and compare them byte for byte."""

    b.tables = dict(sorted(b.tables.items(), key=lambda kv: not _is_data(kv[1])))
    shards = [s for infos in b.tables.values() for s in infos if s.path.startswith("data/")]
    side = [s for infos in b.tables.values() for s in infos if not s.path.startswith("data/")]
    counts = {f"{t}_rows": sum(s.rows for s in infos) for t, infos in b.tables.items()}
    atomic_write_text(b.dir / "README.md", render_card(b.kind, b.tables, cfg, summary, extra))
    atomic_write_text(b.dir / "croissant.json", build_croissant(b.kind, b.dir, b.tables, cfg))
    b.manifest = write_stage_manifest(
        b.dir,
        stage=f"release-{b.kind}",
        schema_version=RELEASE_SCHEMA_VERSION,
        config=cfg,
        inputs=_input_files(inp),
        shards=shards,
        tables=side,
        files=[file_entry(b.dir / n, b.dir) for n in ("README.md", "croissant.json")],
        counts=counts,
        extra=extra,
    )


def release_config(
    inp: Inputs,
    *,
    name: str,
    version: str,
    license: str = "other",
    target: str = "findings",
    formats: Sequence[str] = (),
    rows_per_file: int = 20_000,
    card: CardMetadata | dict[str, Any] | None = None,
) -> ReleaseConfig:
    """The checked release config: hub repo id, semantic version, hub licence id, card."""
    stages = [st.name for st in (inp.records, inp.labels, inp.rois) if st is not None]
    if inp.structured is not None:
        stages.append("structure-reports")
    meta = card.model_dump() if isinstance(card, CardMetadata) else dict(card or {})
    if "size_categories" not in meta or meta["size_categories"] is None:
        meta["size_categories"] = [size_category(inp.rec.height)]
    try:
        return ReleaseConfig(
            name=name,
            version=version,
            license=license,
            target=target,  # type: ignore[arg-type]
            formats=sorted(set(formats)),
            rows_per_file=rows_per_file,
            stages=stages,  # type: ignore[arg-type]
            card=CardMetadata(**meta),
        )
    except (ValueError, TypeError) as e:
        raise CxrctxError(f"release options: {_first_error(e)}") from e


def _first_error(e: Exception) -> str:
    """The message of a pydantic error without its type/url lines."""
    errs = getattr(e, "errors", None)
    if callable(errs):
        first = errs()[0]
        loc = ".".join(str(x) for x in first.get("loc", ()) if x != "__root__")
        msg = str(first.get("msg", "")).removeprefix("Value error, ")
        return f"{loc}: {msg}" if loc and loc not in msg else msg
    return str(e).splitlines()[0]


def _with_section(pub_frames: dict[str, pl.DataFrame], inp: Inputs) -> pl.DataFrame | None:
    """The public long labels plus each study's labeled `section` (for the summary's
    header-only count; the public table itself carries no section)."""
    long = pub_frames.get("labels_long")
    if long is None or inp.lab is None or "section" not in inp.lab.columns:
        return long
    sec = inp.lab.select(
        pl.col("id").cast(pl.String).cast(pl.Int64, strict=False).alias("study_id"), "section"
    ).unique("study_id", keep="first")
    return long.join(sec, on="study_id", how="left")


def build_bundles(inp: Inputs, cfg: ReleaseConfig, stage_dir: Path) -> tuple[Bundle, Bundle, dict]:
    """Write credentialed/ then public/ (which records the credentialed checksums)."""
    pub_frames = _public_tables(inp)
    summary = split_summary(pub_frames["studies"], _with_section(pub_frames, inp))
    provenance = {
        "tool_version": __version__,
        "hub_splits": T.HUB_SPLITS,
        "stages": {
            st.name: stage_provenance(st) for st in (inp.records, inp.labels, inp.rois) if st
        },
        "schemas": schema_hashes(),
        "config_sha256": config_hash(cfg),
        "summary": summary,
    }
    if inp.rois is not None:
        provenance["roi_source"] = ROI_SOURCE
    cred = Bundle("credentialed", stage_dir / "credentialed")
    _write_tables(cred, _credentialed_tables(inp, cfg), cfg)
    _finish_bundle(cred, inp, cfg, summary, provenance)
    assert cred.manifest is not None
    pub = Bundle("public", stage_dir / "public")
    _write_tables(pub, pub_frames, cfg)
    m = cred.manifest
    cred_files = [x.model_dump() for x in [*m.shards, *m.tables, *m.files]]
    _finish_bundle(pub, inp, cfg, summary, {**provenance, "credentialed_files": cred_files})
    return pub, cred, summary


def stale_staging(folder: Path) -> list[Path]:
    """Staging folders a killed `release` left in `folder` (they may hold report text)."""
    out = []
    for d in sorted(folder.glob(f"{STAGING_PREFIX}*")):
        pid = d.name[len(STAGING_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue  # another release is writing it now
        out.append(d)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(folder: Path) -> int:
    """Remove what a killed release left (credentialed text must not linger)."""
    dirs = stale_staging(folder)
    for d in dirs:
        if d.is_symlink() or not d.is_dir():
            d.unlink()
        else:
            shutil.rmtree(d)
    return len(dirs)


@progress_arg("release")
def make_release(
    records: str | os.PathLike,
    *,
    out: str | os.PathLike,
    name: str,
    version: str,
    labels: str | os.PathLike | None = None,
    rois: str | os.PathLike | None = None,
    structured: str | os.PathLike | None = None,
    formats: Sequence[str] = (),
    target: str = "findings",
    license: str = "other",
    rows_per_file: int = 20_000,
    card: CardMetadata | dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: Callable[[str], None] | bool | None = None,
) -> ReleaseResult:
    """Package stage outputs into OUT/public (IDs + enums) and OUT/credentialed (full data).

    Refuses a non-empty OUT of another release unless `overwrite`; writes into a staging
    folder inside OUT and renames the finished bundles into place."""
    progress = as_callback(progress)
    say = progress or (lambda _msg: None)
    inp = load_inputs(records, labels, rois, structured)
    say("inputs checked")
    cfg = release_config(
        inp,
        name=name,
        version=version,
        license=license,
        target=target,
        formats=formats,
        rows_per_file=rows_per_file,
        card=card,
    )
    key = config_hash({"config": cfg.model_dump(mode="json"), "inputs": _input_files(inp)})
    res = prepare_output(out, stage="release", config_hash=key, overwrite=overwrite)
    remove_stale_staging(res.path)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=res.path))
    try:
        pub, cred, summary = build_bundles(inp, cfg, staging)
        say("bundles written")
        for b in (cred, pub):
            final = res.path / b.kind
            if final.exists():
                shutil.rmtree(final)
            os.replace(b.dir, final)
            b.dir = final
    except OSError as e:
        raise CxrctxError(f"{res.path}: cannot write the release ({e.strerror or e})") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ReleaseResult(res.path, pub, cred, summary, cfg)
