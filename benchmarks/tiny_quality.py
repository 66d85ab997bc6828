"""What the tiny preset learns on synthetic studies, checked at the report.

Usage:
    python benchmarks/tiny_quality.py --patients 150 --threads 2            # the preset's defaults
    python benchmarks/tiny_quality.py --patients 300 --set classifier_epochs=20 --json q.json

1. Builds a synthetic root (`cxrctx synth --images --imagenome`, JPG, `--size` px), its
   records and ROIs, and a patient-level split: every third patient (sorted ids) is `test`,
   one in nine `validate` (threshold calibration), the rest `train`.
2. Trains with `cxrctx train`'s defaults (the tiny preset: the global lesion classifier
   first, then stages 1 and 2), plus any `--set KEY=JSON` overrides; wall time measured.
3. `generate` on the test split (deterministic merge, no LLM) and `evaluate` against the
   reference reports with the ground-truth labels (keyword labeler on the generated side).
4. Scores the classifier alone on the *same* test studies from the generated rows'
   probabilities: per-lesion AUC and F1 at its validation-calibrated thresholds, micro-F1
   (what a report listing exactly the classifier's lesions would score), and the baseline
   in the same run: a constant predictor (AUC 0.5; micro-F1 of "always the most frequent
   lesion").
5. Prints a JSON summary: report lesion micro-F1, its ratio to the classifier's micro-F1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_data(work: Path, patients: int, size: int, seed: int) -> dict[str, Path]:
    """Synthetic root → records (test: every third patient) → ROIs; reused when built."""
    import polars as pl

    from cxrctx.imagenome import build_rois
    from cxrctx.io import read_manifest, read_shards, write_manifest, write_shards
    from cxrctx.mimic.build import build_priors
    from cxrctx.synth import synthesize

    d = {
        "root": work / "root",
        "records": work / "priors",
        "rois": work / "rois",
        "labels": work / "root" / "truth",
    }
    if (d["rois"] / "manifest.json").exists():
        return d
    shutil.rmtree(work, ignore_errors=True)
    synthesize(
        d["root"],
        patients=patients,
        seed=seed,
        images=True,
        imagenome=True,
        image_size=size,
        image_format="jpg",
    )
    build_priors(d["root"], d["records"], image_ext="jpg", workers=1)
    recs = read_shards(d["records"] / "records")
    subjects = sorted(recs["subject_id"].unique().to_list())
    rank = {s: i for i, s in enumerate(subjects)}
    split = [
        "test" if rank[s] % 3 == 0 else "validate" if rank[s] % 9 == 1 else "train"
        for s in recs["subject_id"].to_list()
    ]
    recs = recs.with_columns(pl.Series("split", split))
    infos = write_shards(recs, d["records"] / "records", 10**6, relative_to=d["records"])
    m = read_manifest(d["records"] / "manifest.json")  # consumers check shard hashes
    write_manifest(m.model_copy(update={"shards": infos}), d["records"] / "manifest.json")
    build_rois(d["root"] / "imagenome", records=d["records"], out=d["rois"])
    return d


def classifier_on(gen: Path, run: Path, labels: Path) -> dict:
    """The classifier alone on the generated studies: per-lesion AUC/F1, micro-F1, baseline."""
    import numpy as np
    import polars as pl
    import torch

    from cxrctx.io import read_shards
    from cxrctx.train.evaluation import auc, f1_at, micro_macro_f1
    from cxrctx.vocab import LESIONS

    g = read_shards(gen / "generated").sort("study_id")
    p = np.array(g["lesion_probs"].to_list(), dtype=float)
    lab = read_shards(labels / "labels").filter(pl.col("status") == "positive")
    pos = {(int(i), les) for i, les in lab.select("id", "lesion").iter_rows()}
    t = np.array([[(s, les) in pos for les in LESIONS] for s in g["study_id"]], dtype=float)
    thr = torch.load(run / "checkpoints" / "final.pt", weights_only=True)["model"][
        "lesion_thresholds"
    ].numpy()
    per = {}
    for i, les in enumerate(LESIONS):
        if t[:, i].any():
            a = auc(p[:, i], t[:, i])
            per[les] = {
                "support": int(t[:, i].sum()),
                "auc": None if a is None else round(a, 3),
                "f1": round(f1_at(p[:, i], t[:, i], float(thr[i])), 3),
            }
    micro, macro = micro_macro_f1(p, t, thr)
    j = int(t.sum(0).argmax())  # constant baseline: always the most frequent lesion
    base = np.zeros_like(t)
    base[:, j] = 1
    tp = float((base * t).sum())
    base_micro = 2 * tp / (base.sum() + t.sum())
    return {
        "lesions": per,
        "micro_f1": round(micro, 3),
        "macro_f1": round(macro, 3),
        "baseline_micro_f1_most_frequent": round(base_micro, 3),
        "n": int(p.shape[0]),
    }


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for s in pairs:
        k, _, v = s.partition("=")
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=150)
    ap.add_argument(
        "--size", type=int, default=256, help="synthetic image size (cxrctx synth's default)"
    )
    ap.add_argument("--seed", type=int, default=0, help="data and training seed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--set", dest="set_", action="append", default=[], help="config override KEY=JSON"
    )
    ap.add_argument(
        "--classifier",
        type=Path,
        default=None,
        help="reuse this run's trained classifier (skips the classifier stage; decoder experiments)",
    )
    ap.add_argument("--tag", default=None, help="run folder name (default: from the overrides)")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work" / "tiny_quality")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    from cxrctx.reportgen.evaluate import evaluate
    from cxrctx.reportgen.generate import generate
    from cxrctx.train import make_config, train

    work = args.work / f"p{args.patients}-s{args.size}-d{args.seed}"
    t = time.perf_counter()
    d = build_data(work, args.patients, args.size, args.seed)
    data_s = time.perf_counter() - t
    tag = args.tag or (
        "run-" + ("defaults" if not args.set_ else "-".join(sorted(args.set_)).replace("/", "_"))
    )
    run, gen = work / tag, work / (tag + "-gen")
    shutil.rmtree(run, ignore_errors=True)
    shutil.rmtree(gen, ignore_errors=True)
    cfg = make_config("tiny", seed=args.seed, **_overrides(args.set_))
    t = time.perf_counter()
    res = train(
        cfg,
        records=d["records"],
        labels=d["labels"],
        rois=d["rois"],
        images=d["root"],
        out=run,
        classifier=args.classifier,
    )
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    generate(run, out=gen, split="test")
    rep = evaluate(gen, reference=d["records"], reference_labels=d["labels"])
    gen_s = time.perf_counter() - t
    les = rep.lesion or {}
    cls = classifier_on(gen, run, d["labels"])
    out = {
        "patients": args.patients,
        "overrides": args.set_,
        "threads": args.threads,
        "train_items": res.counts["train_items"],
        "val_items": res.counts["val_items"],
        "test_studies": cls["n"],
        "data_s": round(data_s, 1),
        "train_s": round(train_s, 1),
        "generate_evaluate_s": round(gen_s, 1),
        "classifier_val_macro_auc": res.classifier.get("macro_auc"),
        "classifier_test": cls,
        "report_lesion_micro_f1": les.get("micro_f1"),
        "report_lesion_macro_f1": les.get("macro_f1"),
        "report_over_classifier_micro_f1": (
            round(les["micro_f1"] / cls["micro_f1"], 3)
            if les.get("micro_f1") is not None and cls["micro_f1"]
            else None
        ),
        "report_lesion_f1": {
            s["lesion"]: s["f1"] for s in les.get("lesions", []) if s.get("support")
        },
        "rouge_l": round(rep.rouge_l, 3) if rep.rouge_l is not None else None,
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
