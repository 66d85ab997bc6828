"""The whole cxrctx pipeline from Python, on synthetic data (no MIMIC, no LLM, CPU only).

    python examples/pipeline.py --out out/pipeline [--patients 60]

synth (reports + images + scene graphs + truth labels) → build_priors → build_rois →
train (tiny preset) → generate (deterministic merge) → evaluate (against the truth).
With real data, replace the synth root by your MIMIC-CXR copy and the truth labels by a
`cxrctx label-lesions` output directory. Needs the `train` extra (torch + timm).
A smoke run: a tiny model on 60 synthetic patients mostly writes negative sentences;
`benchmarks/tiny_quality.py` shows what longer training on more patients learns.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cxrctx.imagenome import build_rois
from cxrctx.mimic import build_priors
from cxrctx.reportgen.evaluate import evaluate
from cxrctx.reportgen.generate import generate
from cxrctx.synth import synthesize
from cxrctx.train import make_config, train


def main(out: Path, patients: int, epochs: int | None = None) -> dict:
    root = out / "mimic"
    synthesize(
        root,
        patients=patients,
        seed=0,
        images=True,
        imagenome=True,
        image_size=96,
        image_format="jpg",
    )
    build_priors(root, out / "records", image_ext="jpg", max_priors=3)
    build_rois(root / "imagenome", records=out / "records", out=out / "rois")
    cfg = make_config("tiny", **({"epochs_stage1": epochs} if epochs else {}))
    train(
        cfg,
        records=out / "records",
        labels=root / "truth",  # ground truth in label-lesions format
        rois=out / "rois",
        images=root,
        out=out / "run",
    )
    generate(out / "run", out=out / "generated", split=None)
    report = evaluate(
        out / "generated",
        reference=out / "records",
        reference_labels=root / "truth",
        out=out / "evaluation",
    )
    return report.model_dump(mode="json")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=Path("out/pipeline"))
    ap.add_argument("--patients", type=int, default=60)
    ap.add_argument(
        "--epochs", type=int, default=None, help="stage-1 epochs (default: the tiny preset's)"
    )
    args = ap.parse_args()
    summary = main(args.out, args.patients, args.epochs)
    print(
        json.dumps(
            {k: summary[k] for k in ("n_generated", "n_pairs", "labeler", "rouge_l")}, indent=2
        )
    )
    print(
        "lesion micro-F1 of generated reports vs truth:",
        (summary.get("lesion") or {}).get("micro_f1"),
    )
