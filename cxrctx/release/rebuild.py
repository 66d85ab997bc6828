"""`rebuild`: re-run a release's recorded stages on the user's own MIMIC-CXR copy and check
that every file's sha256 equals the release's.

The public bundle records everything needed: each stage's config (build-priors options;
label backend, model name + sha256, prompt version + sha256, sampling), the sha256 of every
MIMIC input file, of every stage shard, and of every file of both bundles. `rebuild` checks
the MIMIC root first (a missing file is a one-line error naming the PhysioNet project that
holds it), runs build-priors → label-lesions (re-labelling, or from a label cache or an
existing label-lesions output) → release, then compares, and says for each differing file
why (a different input checksum, reports missing or different per study).
"""

from __future__ import annotations

import inspect
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from cxrctx.errors import CxrctxError
from cxrctx.io import config_hash, open_stage, sha256_file
from cxrctx.labeling import (
    Labeler,
    LabelLesionsConfig,
    label_lesions,
    load_hybrid_prompt,
    load_prompt,
)
from cxrctx.llm.base import Sampling
from cxrctx.llm.spec import EngineSpec
from cxrctx.mimic.build import build_priors
from cxrctx.output_policy import prepare_output
from cxrctx.release.release import ReleaseConfig, make_release
from cxrctx.vocab import lexicon

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
    for inp in bp.get("inputs", []):
        f = root / inp["path"]
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


def _run_build_priors(root: Path, out: Path, cfg: dict[str, Any], workers: int | None) -> Path:
    kwargs: dict[str, Any] = {
        "max_priors": cfg.get("max_priors", 3),
        "rows_per_shard": cfg.get("rows_per_shard", 20_000),
        "jsonl": "jsonl" in cfg.get("formats", []),
        "reports_zip": root / cfg["reports_zip"] if cfg.get("reports_zip") else None,
        "scan_dicom": cfg.get("scan_dicom", False),
        "image_ext": cfg.get("image_ext", "dcm"),
        "workers": workers or cfg.get("workers"),
    }
    params = inspect.signature(build_priors).parameters
    kwargs = {k: v for k, v in kwargs.items() if k in params}
    if "out" in params:
        build_priors(root, out=out, **kwargs)  # type: ignore[call-arg]
    else:
        build_priors(root, out, **kwargs)
    return out


def _check_model(cfg: dict[str, Any], model: str | None) -> None:
    if model is None and cfg.get("model_sha256"):
        raise CxrctxError(
            f"the release was labelled by {cfg['backend']} model {cfg['model']} (sha256 "
            f"{cfg['model_sha256']}): pass --model PATH to your copy of it, or --labels / --label-cache"
        )
    if model is not None and cfg.get("model_sha256") and Path(model).is_file():
        if sha256_file(model) != cfg["model_sha256"]:
            raise CxrctxError(f"{model}: sha256 differs from the release's model {cfg['model']}")


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


def _engine_spec(cfg: dict[str, Any], model: str | None) -> Any:
    """The recorded engine (backend, options; never a key) with the user's copy of the model."""
    opts = {
        k: v for k, v in (cfg.get("engine_options") or {}).items() if k in EngineSpec.model_fields
    }
    opts.update(backend=cfg["backend"], model=model or cfg["model"])
    try:
        return EngineSpec(**opts)
    except ValueError as e:
        first = str(e).splitlines()[0]
        raise CxrctxError(f"the release's label engine cannot be rebuilt here ({first})") from e


def _run_labels(
    records: Path,
    out: Path,
    cfg: dict[str, Any],
    *,
    model: str | None,
    label_cache: Path | None,
) -> Path:
    """Re-label with the recorded backend: the rules, or the recorded engine and prompt."""
    sections = cfg.get("sections") or ["findings", "impression"]
    _check_prompt(cfg)
    if cfg["backend"] == "rules":
        rules = LabelLesionsConfig(sections=sections, limit=cfg.get("limit"))
        label_lesions(records, out, labeler=Labeler.rules, config=rules)
        return out
    _check_model(cfg, model)
    cache = None
    if label_cache is not None:
        src = label_cache / "cache" if (label_cache / "cache").is_dir() else label_cache
        cache = out.parent / "label-cache"
        shutil.copytree(src, cache, dirs_exist_ok=True)
    config = LabelLesionsConfig(
        sections=sections, sampling=Sampling(**cfg.get("sampling", {})),
        batch_size=cfg.get("batch_size") or None, prepass=cfg.get("prepass", True),
        prompt=cfg.get("prompt_version"), limit=cfg.get("limit"), cache_dir=cache,
    )  # fmt: skip
    label_lesions(
        records, out, labeler=cfg.get("mode") or Labeler.llm, config=config,
        engine=_engine_spec(cfg, model),
    )
    return out


# ------------------------------------------------------------------ comparison


def _study_notes(public_dir: Path, records: Path, rejects: pl.DataFrame | None) -> list[str]:
    """Per study: why the rebuilt records differ (missing report, different report)."""
    studies = pl.concat(
        [pl.read_parquet(f) for f in sorted((public_dir / "data" / "studies").glob("*.parquet"))]
    ).select("study_id", "report_sha256")
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
        f = bundle / path
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
    st = open_stage(public, "release-public")
    m = st.manifest
    pub = [s.model_dump() for s in m.shards] + [f.model_dump() for f in m.files]
    return st, m.extra, pub, list(m.extra.get("credentialed_files", []))


def rebuild(
    public_dir: str | os.PathLike,
    mimic_root: str | os.PathLike,
    *,
    out: str | os.PathLike,
    model: str | None = None,
    labels: str | os.PathLike | None = None,
    label_cache: str | os.PathLike | None = None,
    rois: str | os.PathLike | None = None,
    structured: str | os.PathLike | None = None,
    workers: int | None = None,
    overwrite: bool = False,
) -> RebuildReport:
    """Rebuild a release from its public bundle and a MIMIC-CXR root into OUT; compare."""
    pdir = Path(public_dir)
    if (pdir / "public").is_dir() and not (pdir / "manifest.json").exists():
        pdir = pdir / "public"
    st, extra, pub_files, cred_files = _expected(pdir)
    cfg = ReleaseConfig(**st.manifest.config)
    stages = extra.get("stages", {})
    root = Path(mimic_root)
    rep = RebuildReport(Path(out))
    rep.input_notes = check_root(root, stages.get("build-priors", {}))
    res = prepare_output(
        out, stage="rebuild", config_hash=config_hash({"release": pub_files}), overwrite=overwrite
    )
    rep.out_dir = o = res.path
    records = _run_build_priors(root, o / "build-priors", stages["build-priors"]["config"], workers)
    lab = None
    if "label-lesions" in stages:
        if labels is not None:
            lab = Path(labels)
        else:
            lab = _run_labels(
                records, o / "label-lesions", stages["label-lesions"]["config"], model=model,
                label_cache=Path(label_cache) if label_cache else None,
            )  # fmt: skip
    if "build-rois" in stages and rois is None:
        rep.skipped.append("build-rois: pass --rois with a build-rois output of these records")
    if "structure-reports" in cfg.stages and structured is None:
        rep.skipped.append("structure-reports: pass --structured with its output")
    make_release(
        records, out=o / "release", name=cfg.name, version=cfg.version, labels=lab, rois=rois,
        structured=structured, formats=cfg.formats, target=cfg.target, license=cfg.license,
        rows_per_file=cfg.rows_per_file, overwrite=True,
    )  # fmt: skip
    _compare(rep, pdir, o, stages, pub_files, cred_files)
    return rep


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
