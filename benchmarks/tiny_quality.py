"""What the tiny preset learns on synthetic studies: held-out classifier AUC and report metrics.

Usage:
    python benchmarks/tiny_quality.py --patients 120 --epochs 30 --threads 1

Builds a synthetic root with images and scene graphs, moves every 4th patient to
'validate' (the generator's split is MIMIC-like, ~98 % train), trains the tiny preset
(stage 1 for `--epochs`, stage 2 for 3), then generates reports for the validation studies
(deterministic merge) and evaluates them against the reference reports with the ground-truth
labels (keyword labeler for the generated side). Baselines in the same run: a constant
predictor (AUC 0.5, majority-class accuracy) for the classifier.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=120)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work" / "tiny_quality")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT / "tests"))
    from trainer_fixtures import make_root

    from cxrctx.reportgen.evaluate import evaluate
    from cxrctx.reportgen.generate import generate
    from cxrctx.train import make_config, train

    shutil.rmtree(args.work, ignore_errors=True)
    d = make_root(args.work, patients=args.patients, size=96, seed=0, heldout_every=4)
    cfg = make_config("tiny", epochs_stage1=args.epochs, epochs_stage2=3, checkpoint_every=500)
    t = time.perf_counter()
    res = train(
        cfg,
        records=d["records"],
        labels=d["labels"],
        rois=d["rois"],
        images=d["root"],
        out=args.work / "run",
    )
    train_s = time.perf_counter() - t
    generate(args.work / "run", out=args.work / "gen", split="validate")
    rep = evaluate(args.work / "gen", reference=d["records"], reference_labels=d["labels"])
    les = rep.lesion or {}
    out = {
        "train_items": res.counts["train_items"],
        "val_items": res.counts["val_items"],
        "steps": res.global_step,
        "train_s": round(train_s, 1),
        "val_macro_auc": round(res.eval["macro_auc"], 3),
        "val_auc": {k: round(v, 3) for k, v in res.eval["auc"].items() if v is not None},
        "val_accuracy": round(res.eval["accuracy"], 4),
        "majority_accuracy": round(res.eval["majority_accuracy"], 4),
        "report_lesion_macro_f1": les.get("macro_f1"),
        "report_lesion_macro_over": les.get("macro_lesions"),
        "report_lesion_fp_without_support": les.get("fp_without_support"),
        "report_lesion_f1": {
            s["lesion"]: s["f1"] for s in les.get("lesions", []) if s.get("support")
        },
        "rouge_l": round(rep.rouge_l, 3) if rep.rouge_l is not None else None,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
