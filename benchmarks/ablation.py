"""CLALA-Net ablations on synthetic data: full / without LCA / without LLCL / base, × seeds.

Usage:
    python benchmarks/ablation.py --patients 210 --seeds 0 1 2 --epochs1 4 --epochs2 1 --threads 1

(two processes, one thread each, may split the configs: `--configs full "without LCA"
--json a.json` and `--configs "without LLCL" base --json b.json`, then
`--merge a.json b.json` prints the combined table.)

1. Builds one synthetic root (`cxrctx synth --images --imagenome`), its records and ROIs,
   and a patient-level split: of the patients in sorted order, 2 of every 9 are `test`,
   1 of every 9 `validate` (threshold calibration), the rest `train`.
2. Trains the global lesion classifier once (`--stage classifier`, seed 0) and, with it
   loaded frozen (`--classifier`), the tiny preset four times per seed with the same budget
   (epochs, batch, LR): full; without LCA (`use_lca=false`); without LLCL
   (`use_llcl=false`); base (neither). As in the paper, the ablations leave the classifier
   untouched.
3. For each run: `generate` on the test split with the deterministic merge (no LLM), then
   `evaluate` against the reference reports with the ground-truth labels (keyword labeler
   on the generated side). Also scored from the same generate output: the classifier alone
   (test macro-AUC, and micro/macro F1 at the run's calibrated thresholds), i.e. what the
   report would say if it listed the classifier's lesions.
4. Prints a JSON summary and a markdown table of mean ± std over seeds.

Each run fills its own crop cache (train refuses an --out that is not empty and not a run).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CONFIGS: dict[str, dict] = {
    "full": {},
    "without LCA": {"use_lca": False},
    "without LLCL": {"use_llcl": False},
    "base": {"use_lca": False, "use_llcl": False},
}


def build_data(work: Path, patients: int, size: int) -> dict[str, Path]:
    """Synthetic root → records (patient-level split) → ROIs; reused when already built."""
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
        seed=0,
        images=True,
        imagenome=True,
        image_size=size,
        image_format="jpg",
    )
    build_priors(d["root"], d["records"], image_ext="jpg", workers=1)
    recs = read_shards(d["records"] / "records")
    subjects = sorted(recs["subject_id"].unique().to_list())
    rank = {s: i % 9 for i, s in enumerate(subjects)}
    split = [
        "test" if rank[s] < 2 else "validate" if rank[s] == 2 else "train"
        for s in recs["subject_id"].to_list()
    ]
    recs = recs.with_columns(pl.Series("split", split))
    infos = write_shards(recs, d["records"] / "records", 10**6, relative_to=d["records"])
    m = read_manifest(d["records"] / "manifest.json")  # consumers check shard hashes
    write_manifest(m.model_copy(update={"shards": infos}), d["records"] / "manifest.json")
    build_rois(d["root"] / "imagenome", records=d["records"], out=d["rois"])
    return d


def truth_matrix(labels: Path, study_ids: list[int]):
    import numpy as np
    import polars as pl

    from cxrctx.io import read_shards
    from cxrctx.vocab import LESIONS

    lab = read_shards(labels / "labels").filter(pl.col("status") == "positive")
    pos = {(int(i), les) for i, les in lab.select("id", "lesion").iter_rows()}
    return np.array([[(s, les) in pos for les in LESIONS] for s in study_ids], dtype=float)


def classifier_scores(run: Path, gen: Path, labels: Path) -> dict[str, float | None]:
    """Test macro-AUC and micro/macro F1 of the classifier alone at the run's thresholds."""
    import numpy as np
    import torch

    from cxrctx.io import read_shards
    from cxrctx.train.evaluation import auc, micro_macro_f1

    g = read_shards(gen / "generated").sort("study_id")
    p = np.array(g["lesion_probs"].to_list(), dtype=float)
    t = truth_matrix(labels, g["study_id"].to_list())
    ck = torch.load(run / "checkpoints" / "final.pt", map_location="cpu", weights_only=True)
    thr = ck["model"]["lesion_thresholds"].numpy()
    aucs = [a for i in range(p.shape[1]) if (a := auc(p[:, i], t[:, i])) is not None]
    micro, macro = micro_macro_f1(p, t, thr)
    return {"cls_macro_auc": float(np.mean(aucs)), "cls_micro_f1": micro, "cls_macro_f1": macro}


def shared_classifier(d: dict[str, Path], work: Path, args) -> Path:
    """The one classifier every configuration and seed loads frozen (trained once, reused)."""
    from cxrctx.train import make_config, train

    out = work / "classifier"
    if (out / "classifier" / "manifest.json").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    cfg = make_config(
        "tiny", seed=0, **({"classifier_epochs": args.epochs_cls} if args.epochs_cls else {})
    )
    t = time.perf_counter()
    res = train(
        cfg,
        records=d["records"],
        labels=d["labels"],
        rois=d["rois"],
        images=d["root"],
        out=out,
        stage="classifier",
    )
    print(
        json.dumps(
            {
                "classifier_s": round(time.perf_counter() - t, 1),
                "val_macro_auc": res.classifier.get("macro_auc"),
                "val_micro_f1": res.classifier.get("f1_micro"),
            }
        ),
        flush=True,
    )
    return out


def one_run(d: dict[str, Path], work: Path, name: str, seed: int, args) -> dict:
    from cxrctx.reportgen.evaluate import evaluate
    from cxrctx.reportgen.generate import generate
    from cxrctx.train import make_config, train

    tag = f"{name.replace(' ', '_')}-s{seed}"
    run, gen = work / "runs" / tag, work / "gen" / tag
    shutil.rmtree(run, ignore_errors=True)
    shutil.rmtree(gen, ignore_errors=True)
    budget = {"epochs_stage1": args.epochs1, "epochs_stage2": args.epochs2}
    cfg = make_config(
        "tiny",
        seed=seed,
        checkpoint_every=10**6,
        **{k: v for k, v in budget.items() if v is not None},
        **CONFIGS[name],
    )
    t = time.perf_counter()
    res = train(
        cfg,
        records=d["records"],
        labels=d["labels"],
        rois=d["rois"],
        images=d["root"],
        out=run,
        classifier=args.classifier_run,
    )
    train_s = time.perf_counter() - t
    g = generate(run, out=gen, split="test")
    rep = evaluate(gen, reference=d["records"], reference_labels=d["labels"])
    les = rep.lesion or {}
    row = {
        "config": name,
        "seed": seed,
        "train_s": round(train_s, 1),
        "steps": res.global_step,
        "test_studies": g.rows,
        "report_micro_f1": les.get("micro_f1"),
        "report_macro_f1": les.get("macro_f1"),
        "rouge_l": rep.rouge_l,
        **classifier_scores(run, gen, d["labels"]),
    }
    row["report_over_cls"] = (
        row["report_micro_f1"] / row["cls_micro_f1"]
        if row["cls_micro_f1"] and row["report_micro_f1"] is not None
        else None
    )
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict]) -> str:
    def ms(vals: list[float]) -> str:
        vals = [v for v in vals if v is not None]
        if not vals:
            return "–"
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):.3f} ± {sd:.3f}"

    cols = [
        "cls_macro_auc",
        "cls_micro_f1",
        "report_micro_f1",
        "report_over_cls",
        "report_macro_f1",
        "rouge_l",
    ]
    out = ["| config | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name in CONFIGS:
        sub = [r for r in rows if r["config"] == name]
        if sub:
            out.append(f"| {name} | " + " | ".join(ms([r[c] for r in sub]) for c in cols) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=210)
    ap.add_argument("--size", type=int, default=128, help="synthetic image size (px)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--epochs1", type=int, default=None, help="stage-1 epochs (preset's when absent)"
    )
    ap.add_argument(
        "--epochs2", type=int, default=None, help="stage-2 epochs (preset's when absent)"
    )
    ap.add_argument(
        "--epochs-cls", type=int, default=None, help="classifier epochs (preset's when absent)"
    )
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work" / "ablation")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    ap.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        help="only print the table of these --json files (runs split over processes)",
    )
    args = ap.parse_args()
    if args.merge:
        rows = [r for f in args.merge for r in json.loads(f.read_text())["rows"]]
        print(table(rows))
        return
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    t = time.perf_counter()
    d = build_data(args.work, args.patients, args.size)
    args.classifier_run = shared_classifier(d, args.work, args)
    rows = [one_run(d, args.work, c, s, args) for s in args.seeds for c in args.configs]
    summary = {"rows": rows, "wall_s": round(time.perf_counter() - t, 1), "args": vars(args)}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
