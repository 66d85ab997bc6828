"""`rebuild`: re-run a release's recorded stages on the user's own MIMIC-CXR copy and check
that every file's sha256 equals the release's.

The public bundle records everything needed: each stage's config (build-priors options;
label backend, model name + sha256, prompt version + sha256, sampling), the sha256 of every
MIMIC input file, of every stage shard, and of every file of both bundles.

A bundle is a download nobody signed, so nothing in it chooses where data goes or which
secret is read: the label engine (backend, model, server URL, API-key variable, the
public-API permission) comes from the caller's `engine` only (the rules need none), every
path it names must stay inside the bundle or the MIMIC root, and every recorded option is
type-checked before use. Chest ImaGenome ROI boxes are recomputed with `imagenome=DIR`. `rebuild` checks
the MIMIC root first (a missing file is a one-line error naming the PhysioNet project that
holds it), runs build-priors → label-lesions (re-labelling, or from a label cache or an
existing label-lesions output) → release, then compares, and says for each differing file
why (a different input checksum, reports missing or different per study).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from cxrctx.errors import CxrctxError
from cxrctx.imagenome import build_rois
from cxrctx.io import config_hash, open_stage, sha256_file
from cxrctx.labeling import (
    Labeler,
    LabelLesionsConfig,
    label_lesions,
    load_hybrid_prompt,
    load_prompt,
)
from cxrctx.llm.base import Sampling
from cxrctx.mimic.build import BuildPriorsConfig, build_priors
from cxrctx.output_policy import prepare_output
from cxrctx.progress import as_callback, progress_arg
from cxrctx.release.meta import ReleaseConfig
from cxrctx.release.release import make_release
from cxrctx.release.trust import open_bundle, safe_join
from cxrctx.vocab import SECTIONS, lexicon

Progress = Callable[..., None]

MIMIC_CXR = "MIMIC-CXR (https://physionet.org/content/mimic-cxr/2.0.0/)"
MIMIC_CXR_JPG = "MIMIC-CXR-JPG (https://physionet.org/content/mimic-cxr-jpg/2.1.0/)"


def project_of(name: str) -> str:
    """The PhysioNet project that distributes a MIMIC file."""
    if name.endswith(".csv.gz") or name.endswith(".csv"):
        return MIMIC_CXR_JPG
    return MIMIC_CXR


@dataclass
class Difference:
    path: str
    expected: str | None
    got: str | None
    reason: str


@dataclass
class RebuildReport:
    out_dir: Path
    compared: int = 0
    differences: list[Difference] = field(default_factory=list)
    input_notes: list[str] = field(default_factory=list)
    study_notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.differences and not self.skipped


# ------------------------------------------------------------------ inputs


def check_root(root: Path, bp: dict[str, Any]) -> list[str]:
    """Compare the MIMIC root with the release's recorded inputs.

    Missing files are fatal (one line, each named with its PhysioNet project); different
    checksums are returned as notes (the rebuild goes on and says which outputs differ)."""
    if not root.is_dir():
        raise CxrctxError(f"{root}: MIMIC root not found")
    missing, notes = [], []
    for inp in bp.get("inputs") or []:
        if not (
            isinstance(inp, dict)
            and isinstance(inp.get("path"), str)
            and isinstance(inp.get("sha256"), str)
        ):
            raise CxrctxError(f"the release records a malformed input file entry: {inp!r:.80}")
        f = safe_join(root, inp["path"], "input file")
        if not f.is_file():
            missing.append(f"{inp['path']} (from {project_of(inp['path'])})")
        elif sha256_file(f) != inp["sha256"]:
            notes.append(
                f"{inp['path']}: sha256 differs from the release's (another version of the file?)"
            )
    cfg = bp.get("config", {})
    if cfg.get("reports_source") == "files" and not (root / "files").is_dir():
        missing.append(f"files/ with the reports (from {MIMIC_CXR})")
    if missing:
        raise CxrctxError(
            f"{root}: missing {len(missing)} file(s) the release needs: {'; '.join(missing)}"
        )
    return notes


def build_priors_options(cfg: dict[str, Any], root: Path) -> dict[str, Any]:
    """The recorded build-priors options, type-checked (a bundle is untrusted input)."""

    try:
        c = BuildPriorsConfig(**{k: v for k, v in cfg.items() if k != "workers"})
    except (ValueError, TypeError) as e:
        first = str(e).splitlines()[0]
        raise CxrctxError(f"the release's build-priors options are not valid ({first})") from e
    if c.image_ext not in ("dcm", "jpg"):
        raise CxrctxError(f"the release's image_ext {c.image_ext!r} is not dcm or jpg")
    zip_path = safe_join(root, c.reports_zip, "reports zip") if c.reports_zip else None
    return {
        "max_priors": c.max_priors,
        "rows_per_shard": c.rows_per_shard,
        "jsonl": "jsonl" in c.formats,
        "reports_zip": zip_path,
        "scan_dicom": c.scan_dicom,
        "image_ext": c.image_ext,
        "max_report_bytes": c.max_report_bytes,
    }


def _run_build_priors(
    root: Path, out: Path, cfg: dict[str, Any], workers: int | None, progress: Progress | None
) -> Path:
    """build-priors with the recorded options; worker count is the caller's, never the bundle's."""

    opts = build_priors_options(cfg, root)
    build_priors(root, out, workers=workers, progress=progress, **opts)
    return out


def _check_engine(cfg: dict[str, Any], engine: Any) -> None:
    """The caller's engine must be the recorded backend, and its model file the recorded one."""
    name = f"{cfg.get('backend')} model {cfg.get('model')}"
    if engine is None:
        sha = f" (sha256 {cfg['model_sha256']})" if cfg.get("model_sha256") else ""
        raise CxrctxError(
            f"the release was labelled by {name}{sha}: pass --backend {cfg.get('backend')} "
            "--model PATH (your copy of it; --base-url for a server you run), or --labels / --label-cache"
        )
    if engine.backend != cfg.get("backend"):
        raise CxrctxError(
            f"the release was labelled by {name}; --backend {engine.backend} cannot reproduce it"
        )
    if cfg.get("model_sha256") and Path(engine.model).is_file():
        if sha256_file(engine.model) != cfg["model_sha256"]:
            raise CxrctxError(
                f"{engine.model}: sha256 differs from the release's model {cfg['model']}"
            )


def _check_prompt(cfg: dict[str, Any]) -> None:
    """The prompt (or, for the rules, the lexicon) must be the one the release used."""
    mode = cfg.get("mode")
    if cfg["backend"] == "rules":
        sha, what = lexicon().sha256, f"lexicon v{cfg.get('lexicon_version')}"
    elif mode in ("cot", "short"):
        sha = load_hybrid_prompt(cfg.get("prompt_version")).sha256
        what = f"hybrid prompt v{cfg.get('prompt_version')}"
    else:
        sha, what = (
            load_prompt(cfg.get("prompt_version")).sha256,
            f"prompt v{cfg.get('prompt_version')}",
        )
    if sha != cfg.get("prompt_sha256"):
        raise CxrctxError(
            f"{what} of this cxrctx differs from the release's (sha256 {cfg.get('prompt_sha256')}): "
            "use the cxrctx version the release names"
        )


def label_options(cfg: dict[str, Any]) -> dict[str, Any]:
    """The recorded labelling options, type-checked: never a path, a URL or a key name."""

    def bad(what: str) -> CxrctxError:
        return CxrctxError(f"the release's label-lesions {what} is not valid")

    backend, mode = cfg.get("backend"), cfg.get("mode")
    if backend not in ("rules", "llamacpp", "openai", "vllm", "fake"):
        raise bad(f"backend {backend!r}")
    if mode not in (None, "llm", "cot", "short"):
        raise bad(f"mode {mode!r}")
    sections = cfg.get("sections") or ["findings", "impression"]
    if not isinstance(sections, list) or any(x not in SECTIONS for x in sections):
        raise bad(f"sections {sections!r}")
    pv, limit, batch = cfg.get("prompt_version"), cfg.get("limit"), cfg.get("batch_size")
    if backend != "rules" and (not isinstance(pv, int) or isinstance(pv, bool)):
        raise bad(f"prompt_version {pv!r} (a version number, never a file)")
    for what, v in (("limit", limit), ("batch_size", batch)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 0 < v <= 10**9):
            raise bad(f"{what} {v!r}")
    sampling = cfg.get("sampling") or {}
    try:
        samp = Sampling(
            **{
                k: sampling[k]
                for k in ("temperature", "top_p", "max_tokens", "seed")
                if k in sampling
            }
        )
    except TypeError as e:
        raise bad(f"sampling ({e})") from e
    return {
        "backend": backend,
        "mode": mode or "llm",
        "sections": sections,
        "prompt": pv,
        "limit": limit,
        "batch_size": batch or None,
        "sampling": samp,
        "prepass": bool(cfg.get("prepass", True)),
    }


def run_labels(
    records: Path,
    out: Path,
    opts: dict[str, Any],
    engine: Any,
    cache: Path | None,
    progress: Progress | None = None,
) -> None:
    """The one call into labeling: the rules, or the caller's engine with the recorded prompt."""

    if opts["backend"] == "rules":
        rules = LabelLesionsConfig(sections=opts["sections"], limit=opts["limit"])
        label_lesions(records, out, labeler=Labeler.rules, config=rules, progress=progress)
        return
    config = LabelLesionsConfig(
        sections=opts["sections"],
        sampling=opts["sampling"],
        batch_size=opts["batch_size"],
        prepass=opts["prepass"],
        prompt=opts["prompt"],
        limit=opts["limit"],
        cache_dir=cache,
    )
    label_lesions(
        records, out, labeler=opts["mode"], config=config, engine=engine, progress=progress
    )


def _run_labels(
    records: Path,
    out: Path,
    cfg: dict[str, Any],
    *,
    engine: Any,
    label_cache: Path | None,
    progress: Progress | None = None,
) -> Path:
    """Re-label: the rules need nothing; a model-labelled release needs the caller's engine."""
    opts = label_options(cfg)
    _check_prompt(cfg)
    cache = None
    if opts["backend"] != "rules":
        _check_engine(cfg, engine)
        if label_cache is not None:
            src = label_cache / "cache" if (label_cache / "cache").is_dir() else label_cache
            cache = out.parent / "label-cache"
            shutil.copytree(src, cache, dirs_exist_ok=True, symlinks=True)
    run_labels(records, out, opts, engine, cache, progress)
    return out


# ------------------------------------------------------------------ comparison


def _study_notes(public_dir: Path, records: Path, rejects: pl.DataFrame | None) -> list[str]:
    """Per study: why the rebuilt records differ (missing report, different report)."""
    st = open_bundle(public_dir, "release-public", verify="exists")
    files = [st.dir / s.path for s in st.manifest.shards if s.path.startswith("data/studies/")]
    studies = pl.concat([pl.read_parquet(f) for f in files]).select("study_id", "report_sha256")
    rec = (
        open_stage(records, "build-priors", verify="rows")
        .read()
        .select("study_id", "report_sha256")
    )
    j = studies.join(rec, on="study_id", how="left", suffix="_now")
    notes = []
    for sid in j.filter(pl.col("report_sha256_now").is_null())["study_id"].head(20).to_list():
        why = "not a record of the rebuild"
        if rejects is not None:
            r = rejects.filter(pl.col("study_id") == sid)
            if r.height:
                why = f"rejected: {r['reason'][0]} ({r['source'][0]})"
        notes.append(f"study {sid}: {why}")
    diff = j.filter(
        pl.col("report_sha256_now").is_not_null()
        & (pl.col("report_sha256_now") != pl.col("report_sha256"))
    )
    notes += [
        f"study {sid}: report text differs (sha256)" for sid in diff["study_id"].head(20).to_list()
    ]
    extra = rec.join(studies, on="study_id", how="anti")
    notes += [
        f"study {sid}: a record of the rebuild, not of the release"
        for sid in extra["study_id"].head(20).to_list()
    ]
    return notes


def compare_files(
    expected: list[dict[str, Any]], bundle: Path, prefix: str, reason: str
) -> tuple[int, list[Difference]]:
    out = []
    want = {e["path"]: e["sha256"] for e in expected}
    for path, sha in want.items():
        f = safe_join(bundle, path, f"{prefix} file")
        got = sha256_file(f) if f.is_file() else None
        if got != sha:
            out.append(
                Difference(
                    f"{prefix}/{path}",
                    sha,
                    got,
                    "missing from the rebuild" if got is None else reason,
                )
            )
    if bundle.is_dir():
        for f in sorted(bundle.rglob("*")):
            rel = f.relative_to(bundle).as_posix()
            if f.is_file() and rel.startswith(("data/", "exports/")) and rel not in want:
                out.append(
                    Difference(f"{prefix}/{rel}", None, sha256_file(f), "not in the release")
                )
    return len(want), out


def _expected(public: Path) -> tuple[Any, dict[str, Any], list[dict], list[dict]]:
    st = open_bundle(public, "release-public")
    m = st.manifest
    pub = [s.model_dump() for s in m.shards] + [f.model_dump() for f in m.files]
    return st, m.extra, pub, list(m.extra.get("credentialed_files", []))


@progress_arg("rebuild")
def rebuild(
    public_dir: str | os.PathLike,
    mimic_root: str | os.PathLike,
    *,
    out: str | os.PathLike,
    engine: Any = None,
    labels: str | os.PathLike | None = None,
    label_cache: str | os.PathLike | None = None,
    rois: str | os.PathLike | None = None,
    imagenome: str | os.PathLike | None = None,
    structured: str | os.PathLike | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: Progress | bool | None = None,
) -> RebuildReport:
    """Rebuild a release from its public bundle and a MIMIC-CXR root into OUT; compare.

    `engine` (an EngineSpec from the caller's own options) labels a model-labelled release;
    the bundle's recorded engine options are never used. `imagenome` (a Chest ImaGenome
    folder) recomputes the ROI boxes; `rois` reuses a build-rois output instead.
    `progress` receives the events of each stage it runs (True: tqdm bars)."""
    progress = as_callback(progress)
    pdir, cfg, stages, pub_files, cred_files = _read_bundle(Path(public_dir))
    root = Path(mimic_root)
    rep = RebuildReport(Path(out))
    rep.input_notes = check_root(root, stages.get("build-priors", {}))
    res = prepare_output(
        out, stage="rebuild", config_hash=config_hash({"release": pub_files}), overwrite=overwrite
    )
    rep.out_dir = o = res.path
    bp_cfg = _config(stages, "build-priors")
    records = _run_build_priors(root, o / "build-priors", bp_cfg, workers, progress)
    lab = None
    if "label-lesions" in stages:
        if labels is not None:
            lab = Path(labels)
        else:
            lab = _run_labels(
                records,
                o / "label-lesions",
                _config(stages, "label-lesions"),
                engine=engine,
                label_cache=Path(label_cache) if label_cache else None,
                progress=progress,
            )
    if "build-rois" in stages and rois is None:
        if imagenome is not None:
            rois = _run_rois(Path(imagenome), records, o / "build-rois", stages["build-rois"])
        else:
            rep.skipped.append(
                "build-rois: pass --imagenome with your Chest ImaGenome copy (or --rois)"
            )
    if "structure-reports" in cfg.stages and structured is None:
        rep.skipped.append("structure-reports: pass --structured with its output")
    make_release(
        records,
        out=o / "release",
        name=cfg.name,
        version=cfg.version,
        labels=lab,
        rois=rois,
        structured=structured,
        formats=cfg.formats,
        target=cfg.target,
        license=cfg.license,
        rows_per_file=cfg.rows_per_file,
        card=cfg.card,
        overwrite=True,
        progress=progress,
    )
    _compare(rep, pdir, o, stages, pub_files, cred_files)
    return rep


def _read_bundle(
    pdir: Path,
) -> tuple[Path, ReleaseConfig, dict[str, Any], list[dict], list[dict]]:
    """The public bundle's folder, release config, recorded stages and expected files;
    refused when the config or any stage's config is not valid (a bundle is untrusted)."""
    if (pdir / "public").is_dir() and not (pdir / "manifest.json").exists():
        pdir = pdir / "public"
    st, extra, pub_files, cred_files = _expected(pdir)
    try:
        cfg = ReleaseConfig(**st.manifest.config)
    except (ValueError, TypeError) as e:
        raise CxrctxError(
            f"{pdir}: the release config is not valid ({str(e).splitlines()[0]})"
        ) from e
    stages = extra.get("stages", {})
    if not isinstance(stages, dict) or "build-priors" not in stages:
        raise CxrctxError(f"{pdir}: the manifest records no build-priors stage")
    for name in stages:
        _config(stages, name)
    return pdir, cfg, stages, pub_files, cred_files


def _config(stages: dict[str, Any], name: str) -> dict[str, Any]:
    """A recorded stage's config, refused unless it is a mapping (a bundle is untrusted)."""
    prov = stages.get(name)
    cfg = prov.get("config") if isinstance(prov, dict) else None
    if not isinstance(cfg, dict):
        raise CxrctxError(f"the release's {name} record is malformed (no config mapping)")
    return cfg


def _run_rois(imagenome: Path, records: Path, out: Path, prov: dict[str, Any]) -> Path:
    """build-rois from the caller's Chest ImaGenome copy, with the recorded options."""

    cfg = prov.get("config") or {}
    rows, frontal = cfg.get("rows_per_shard", 50_000), cfg.get("frontal_only", True)
    if (
        not isinstance(rows, int)
        or isinstance(rows, bool)
        or rows < 1
        or not isinstance(frontal, bool)
    ):
        raise CxrctxError("the release's build-rois options are not valid")
    build_rois(imagenome, records=records, out=out, rows_per_shard=rows, frontal_only=frontal)
    return out


def _compare(
    rep: RebuildReport, pdir: Path, o: Path, stages: dict, pub_files: list, cred_files: list
) -> None:
    bp_shards = stages.get("build-priors", {}).get("shards", [])
    n0, rec_diff = compare_files(bp_shards, o / "build-priors", "build-priors", "records differ")
    if rec_diff or rep.input_notes:
        rej_path = o / "build-priors" / "rejects.parquet"
        rej = pl.read_parquet(rej_path) if rej_path.is_file() else None
        rep.study_notes = _study_notes(pdir, o / "build-priors", rej)
        why = [*rep.input_notes[:1], *rep.study_notes[:3]]
        reason = "records differ: " + ("; ".join(why) if why else "see build-priors/")
        for d in rec_diff:
            d.reason = reason
    else:
        reason = "content differs (same records: labels, options or cxrctx version?)"
    n1, d1 = compare_files(pub_files, o / "release" / "public", "public", reason)
    n2, d2 = compare_files(cred_files, o / "release" / "credentialed", "credentialed", reason)
    rep.compared = n0 + n1 + n2
    rep.differences = rec_diff + d1 + d2
