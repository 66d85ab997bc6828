"""The train run folder: the checks before a run writes into it, the files written at its
start and end, and loading a finished run's model (used by `generate`).

Kept apart from the training loop so that loading a model needs none of the loop.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import torch

from cxrctx import __version__
from cxrctx.errors import CxrctxError
from cxrctx.io import (
    atomic_write_text,
    file_entry,
    sha256_file,
    write_parquet,
    write_stage_manifest,
)
from cxrctx.locks import is_lock_file
from cxrctx.models import ShardInfo
from cxrctx.output_policy import remove_stale_tmp
from cxrctx.train.config import TrainConfig, validate_config
from cxrctx.train.model import ClalaNet
from cxrctx.train.runtime import check_config, load_checkpoint
from cxrctx.train.tokenizer import Tokenizer, load_tokenizer
from cxrctx.vocab import LESIONS as LESIONS_

if TYPE_CHECKING:
    from cxrctx.train.events import TrainResult


def build_model(cfg: TrainConfig, tok: Tokenizer) -> ClalaNet:
    lesion_tokens = torch.tensor([tok.encode(les, cfg.max_tokens) for les in LESIONS_])
    return ClalaNet(cfg, len(tok), lesion_tokens)


def _check_run_dir(run: Path, cfg: TrainConfig, stages: list[int], resume: bool) -> None:
    """The shared output policy, train's way: a run dir continues only the same run
    (--resume, a compatible config); a non-empty folder that is not a train run is refused."""
    ckdir = run / "checkpoints"
    if run.exists() and not run.is_dir():
        raise CxrctxError(f"{run}: exists and is not a directory; --out needs a folder")
    if (
        run.is_dir()
        and any(not is_lock_file(x.name) for x in run.iterdir())
        and not (run / "config.json").exists()
    ):
        raise CxrctxError(f"{run}: not empty and not a train run; choose a new or empty --out")
    if run.is_dir():
        remove_stale_tmp(run)
    if (run / "config.json").exists():
        check_config(json.loads((run / "config.json").read_text()), cfg, run / "config.json")
    if (ckdir / "last.pt").exists() and not resume and 1 in stages:
        raise CxrctxError(
            f"{run}: already holds checkpoints; pass --resume to continue or choose another --out"
        )
    cdir = run / "classifier"
    if (
        0 in stages
        and not resume
        and any((cdir / n).exists() for n in ("classifier.pt", "last.pt"))
    ):
        raise CxrctxError(
            f"{cdir}: already holds a classifier; pass --resume to continue or choose another --out"
        )
    if 2 in stages and 1 not in stages and not (ckdir / "stage1.pt").exists():
        raise CxrctxError(
            f"{ckdir / 'stage1.pt'}: stage 2 needs a finished stage 1 in this run dir"
        )


def _write_run_files(run: Path, cfg: TrainConfig, inputs: dict[str, str | None]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "checkpoints").mkdir(exist_ok=True)
    atomic_write_text(run / "config.json", json.dumps(cfg.model_dump(mode="json"), indent=2) + "\n")
    info = {"tool_version": __version__, **inputs, "fingerprint": cfg.fingerprint()}
    atomic_write_text(run / "run.json", json.dumps(info, indent=2) + "\n")


def _write_skips(run_dir: Path, skips: list[dict]) -> None:
    df = pl.DataFrame(
        skips, schema={"dicom_id": pl.String, "study_id": pl.Int64, "reason": pl.String}
    )
    write_parquet(
        df.unique(subset=["dicom_id"], keep="first", maintain_order=True).sort("dicom_id"),
        run_dir / "skips.parquet",
    )


def _write_run_manifest(run: Path, cfg: TrainConfig, res: TrainResult) -> None:
    """manifest.json like every stage: config, the final weights, tokenizer and skips with
    their sha256, so `generate` (and `cxrctx validate`) can check the run before use."""
    files = [file_entry(run / "checkpoints" / "final.pt", run)]
    files += [
        file_entry(run / n, run) for n in ("tokenizer.json", "run.json") if (run / n).is_file()
    ]
    skips = ShardInfo(
        path="skips.parquet",
        rows=pl.scan_parquet(run / "skips.parquet").select(pl.len()).collect().item(),
        sha256=sha256_file(run / "skips.parquet"),
    )
    write_stage_manifest(
        run,
        stage="train",
        schema_version=1,
        config=cfg,
        tables=[skips],
        files=files,
        counts={**res.counts, "global_step": res.global_step},
    )


def load_final(run: Path, device: Any = "cpu") -> tuple[TrainConfig, ClalaNet, Tokenizer, dict]:
    """Load a finished run's final model (weights_only), its config, tokenizer and run info."""
    path = run / "checkpoints" / "final.pt"
    if not path.exists():
        raise CxrctxError(f"{path}: no final checkpoint (has training finished?)")
    ck = load_checkpoint(path)
    cfg = validate_config(ck["config"], source=str(path))
    tok = load_tokenizer(run / "tokenizer.json")
    if ck.get("vocab_size") != len(tok):
        raise CxrctxError(
            f"{path}: checkpoint vocabulary ({ck.get('vocab_size')}) does not match {run / 'tokenizer.json'} ({len(tok)})"
        )
    model = build_model(cfg, tok)
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as e:
        raise CxrctxError(
            f"{path}: weights do not fit the configured model ({str(e).splitlines()[0]})"
        ) from e
    info = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    info["stage"] = ck.get("stage")
    return cfg, model.to(device).eval(), tok, info
