"""The Hugging Face dataset card (`README.md`) of a release bundle.

YAML front matter: licence, pretty name, tags and one `configs:` entry per table whose
`data_files` name each split, so `datasets.load_dataset(BUNDLE, CONFIG)` returns every
split under its own name (MIMIC's `validate` under the hub's `validation`). The body says
which sections are the target, findings-only vs findings+impression counts, per-split
counts, label positives, provenance and known limitations. Deterministic: no dates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cxrctx.models import ShardInfo
from cxrctx.release import tables as T
from cxrctx.release.info import COUNT_KEYS
from cxrctx.release.meta import HUB_LICENSES, SIZE_CATEGORIES, TASK_CATEGORIES
from cxrctx.vocab import LESIONS

TABLE_DOCS: dict[str, str] = {
    "studies": "one row per study: ids, split, section-presence booleans, prior study ids, flags, report sha256",
    "images": "one row per image: dicom_id, study, split, view position and group, path under the MIMIC-CXR root",
    "records": "one row per study: images, canonical report sections, the K most recent prior studies, flags",
    "labels_long": "14 rows per study: lesion, status (positive/negative), location",
    "labels_wide": "one row per study: <lesion>_status and <lesion>_location columns; integer study_id joins the records",
    "rois": "one row per frontal image: the 11 CLALA-Net ROI boxes (Chest ImaGenome) with their sentences",
    "srrg": "SRRG field names (id, original_report, structured_report, *_section, image_paths)",
    "maira2": "MAIRA-2 inputs: current frontal/lateral, prior frontal, indication, technique, comparison, prior report, target",
    "jsonl": "instruction style: instruction, context (indication, technique, comparison, prior), target",
}


def _yaml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def _meta_lines(kind: str, cfg: Any) -> list[str]:
    """Licence, categories and (credentialed) the gated-access notice, in hub field names."""
    card = cfg.card
    lines = [f"license: {cfg.license}"]
    if cfg.license == "other":
        lines += [
            f"license_name: {_yaml_str(card.license_name)}",
            f"license_link: {_yaml_str(card.license_link)}",
        ]
    lines += [f"pretty_name: {_yaml_str(f'{cfg.name} ({kind})')}", "language:", "- en"]
    if card.task_categories:
        lines += ["task_categories:", *[f"- {t}" for t in card.task_categories]]
    if card.size_categories:
        lines += ["size_categories:", *[f"- {_yaml_str(t)}" for t in card.size_categories]]
    lines += ["tags:", "- medical", "- chest-x-ray", "- radiology-report-generation", "- mimic-cxr"]
    if kind == "credentialed":
        lines.append(f"extra_gated_prompt: {_yaml_str(card.gated_prompt)}")
        lines += [
            "extra_gated_fields:",
            "  PhysioNet username: text",
            "  I hold credentialed access to MIMIC-CXR and signed its data use agreement: checkbox",
        ]
    return lines


def front_matter(kind: str, tables: dict[str, list[ShardInfo]], cfg: Any) -> str:
    lines = ["---", *_meta_lines(kind, cfg), "configs:"]
    first = True
    for name, infos in tables.items():
        if not infos or not infos[0].path.startswith("data/"):
            continue
        lines.append(f"- config_name: {name}")
        if first:
            lines.append("  default: true")
            first = False
        lines.append("  data_files:")
        ext = infos[0].path.rsplit(".", 1)[-1]
        for split in T.SPLIT_ORDER:
            if any(T.split_of(s.path) == split for s in infos):
                lines.append(f"  - split: {split}")
                lines.append(f"    path: data/{name}/{split}-*.{ext}")
    lines.append("---")
    return "\n".join(lines) + "\n"


def _split_table(summary: dict[str, dict[str, int]]) -> list[str]:
    splits = list(summary)
    out = ["| count | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
    for key in COUNT_KEYS:
        out.append(f"| {key} | " + " | ".join(f"{summary[s].get(key, 0):,}" for s in splits) + " |")
    flags = sorted({k for s in splits for k in summary[s] if k.startswith("flag:")})
    for key in flags:
        out.append(f"| {key} | " + " | ".join(f"{summary[s].get(key, 0):,}" for s in splits) + " |")
    return out


def _positives(summary: dict[str, dict[str, int]]) -> list[str]:
    splits = list(summary)
    if not any("labeled_studies" in summary[s] for s in splits):
        return []
    out = ["", "### Lesion labels (positives per split)", ""]
    out += ["| lesion | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
    out.append(
        "| labeled studies | "
        + " | ".join(f"{summary[s].get('labeled_studies', 0):,}" for s in splits)
        + " |"
    )
    for lesion in LESIONS:
        out.append(
            f"| {lesion} | "
            + " | ".join(f"{summary[s].get(f'positive:{lesion}', 0):,}" for s in splits)
            + " |"
        )
    return out


def _provenance(extra: dict[str, Any]) -> list[str]:
    out = ["", "## Provenance", "", f"- cxrctx {extra.get('tool_version')}"]
    for name, m in extra.get("stages", {}).items():
        cfg = m.get("config", {})
        line = f"- `{name}` (cxrctx {m.get('tool_version')}, schema v{m.get('schema_version')})"
        if name == "label-lesions":
            line += (
                f": backend `{cfg.get('backend')}`, model `{cfg.get('model')}`"
                f" (sha256 {cfg.get('model_sha256') or 'n/a'}), prompt v{cfg.get('prompt_version')}"
                f" sha256 {cfg.get('prompt_sha256')}, answer schema sha256 {cfg.get('schema_sha256')}"
            )
        if name == "build-priors":
            line += f": {cfg.get('max_priors')} most recent priors per study, reports from {cfg.get('reports_source')}"
        out.append(line)
    for n, sha in extra.get("schemas", {}).items():
        out.append(f"- `{n}` sha256 {sha}")
    out.append("- every file's sha256 and row count: `manifest.json`")
    return out


def _intro(kind: str, cfg: Any, extra: dict[str, Any]) -> list[str]:
    """Title and what the bundle may hold (public: ids and enums only)."""
    body = [
        f"# {cfg.name} {cfg.version} ({kind})",
        "",
        "Clinical-context chest X-ray report-generation data derived from MIMIC-CXR "
        "(each study with its views, report sections and prior studies), made with cxrctx.",
        "",
    ]
    if kind == "public":
        body += [
            "This bundle holds **identifiers and enumerated labels only** (subject/study/dicom ids, "
            "prior study ids, splits, flags, section-presence booleans, label status/location, "
            "the sha256 of each whole report file). MIMIC-CXR's licence forbids redistributing "
            "report text: rebuild the full records from your own credentialed copy with "
            "`cxrctx rebuild public/ MIMIC_ROOT --out DIR`, which checks every file's sha256 "
            "against this release.",
        ]
        roi = extra.get("roi_source")
        if roi:
            body += [
                "",
                f"ROI boxes come from **{roi['name']} {roi['version']}** ({roi['url']}), itself a "
                "credentialed dataset, so they are in the credentialed bundle only; with access, "
                f"recompute them: `{roi['rebuild']}`.",
            ]
    else:
        body += [
            "This bundle holds **report text** (full records, label rationales) and may only be "
            "shared under the PhysioNet Credentialed Health Data licence (PhysioNet or a gated "
            "hub repository).",
        ]
    return body


def _tables(tables: dict[str, list[ShardInfo]]) -> list[str]:
    """One line per table with its row count (JSON Lines exports are not configs)."""
    body: list[str] = []
    body += ["", "## Tables", ""]
    body += [
        f"- `{n}`: {TABLE_DOCS.get(n, n)} ({sum(s.rows for s in infos):,} rows)"
        + (
            ""
            if infos[0].path.startswith("data/")
            else f"; JSON Lines in `{Path(infos[0].path).parent.as_posix()}/`, not a config: `load_dataset('json', data_files=...)`"
        )
        for n, infos in tables.items()
        if infos
    ]
    return body


def _sections(
    kind: str,
    tables: dict[str, list[ShardInfo]],
    cfg: Any,
    summary: dict[str, dict[str, int]],
    extra: dict[str, Any],
) -> list[str]:
    """Splits, target sections, counts, loading, provenance, limitations, licence."""
    allc = summary.get("all", {})
    body: list[str] = []
    body += [
        "",
        "## Splits",
        "",
        "The MIMIC-CXR split CSV (patient-disjoint) is kept: `train` → `train`, MIMIC's `validate` "
        "→ the hub's **`validation`** split, `test` → `test`; studies without a split row → `unsplit`. "
        "The `split` column keeps MIMIC's own value.",
        "",
        "## Target sections",
        "",
        f"The exports use **{cfg.target}** as the target. Papers differ here; of "
        f"{allc.get('studies', 0):,} studies, {allc.get('with_both', 0):,} have findings and impression, "
        f"{allc.get('findings_only', 0):,} findings only, {allc.get('impression_only', 0):,} impression only, "
        f"{allc.get('neither', 0):,} neither.",
        "",
        "## Counts per split",
        "",
        *_split_table(summary),
        *_positives(summary),
        "",
        "## Loading",
        "",
        "```python",
        "from datasets import load_dataset",
        f'ds = load_dataset("path/to/{kind}", "{next(iter(tables), "studies")}")  # a DatasetDict: {", ".join(s for s in summary if s != "all")}',
        "```",
        *_provenance(extra),
        "",
        "## Known limitations",
        "",
        "- Labels are automatic (rule pass and/or an LLM), not radiologist-reviewed; "
        "a lesion not mentioned is negative.",
        "- Sections come from header matching; reports with neither findings nor impression "
        "keep null sections (flag `no_findings` / `no_impression`).",
        "- Priors are ordered by StudyDate+StudyTime; same-time studies are never each other's "
        "prior (flag `same_time_ambiguous`), same-day studies without a time are not ordered.",
        "- Dates in MIMIC-CXR are shifted per patient; intervals (`days_before`) are kept.",
        "",
        "## Licence",
        "",
        f"Release licence: `{cfg.license}`"
        + (f" ({cfg.card.license_name}, {cfg.card.license_link})" if cfg.license == "other" else "")
        + ". The source data, MIMIC-CXR and MIMIC-CXR-JPG, are "
        "under the PhysioNet Credentialed Health Data License 1.5.0; users need their own "
        "credentialed access to rebuild or use the report text.",
    ]
    if cfg.card.homepage:
        body += ["", f"Homepage: {cfg.card.homepage}"]
    if cfg.card.citation:
        body += ["", "## Citation", "", "```bibtex", cfg.card.citation.strip(), "```"]
    return body


def render_card(
    kind: str,
    tables: dict[str, list[ShardInfo]],
    cfg: Any,
    summary: dict[str, dict[str, int]],
    extra: dict[str, Any],
) -> str:
    """The whole README.md of one bundle."""
    body = _intro(kind, cfg, extra) + _tables(tables) + _sections(kind, tables, cfg, summary, extra)
    return front_matter(kind, tables, cfg) + "\n" + "\n".join(body) + "\n"


def hub_card_problems(card_path: Path) -> list[str]:
    """The card through huggingface_hub's own parser (`DatasetCard`), its metadata against
    the hub's allowed values. Empty when huggingface_hub is not installed (`release` extra).

    The hub's server-side check (`DatasetCard.validate`) needs the network; this is the part
    a library offers offline."""
    import re

    try:
        from huggingface_hub import DatasetCard
    except ImportError:
        return []
    try:
        data = DatasetCard.load(card_path).data.to_dict()
    except Exception as e:  # huggingface_hub raises ValueError / yaml errors on a bad card
        return [f"{card_path}: huggingface_hub cannot read the card ({str(e).splitlines()[0]})"]
    out = []
    lic = data.get("license")
    if lic not in HUB_LICENSES:
        out.append(f"{card_path}: license {lic!r} is not a hub licence id")
    if lic == "other" and not (data.get("license_name") and data.get("license_link")):
        out.append(f"{card_path}: license other without license_name and license_link")
    bad = [t for t in data.get("task_categories") or [] if t not in TASK_CATEGORIES]
    bad += [s for s in data.get("size_categories") or [] if s not in dict(SIZE_CATEGORIES)]
    if bad:
        out.append(f"{card_path}: {', '.join(map(repr, bad))} not among the hub's categories")
    for c in data.get("configs") or []:
        names = [c.get("config_name", "")] + [d.get("split", "") for d in c.get("data_files", [])]
        if any(not re.fullmatch(r"\w+", str(n)) for n in names):
            out.append(f"{card_path}: config {c.get('config_name')!r}: names must match \\w+")
    return out
