"""QC reports (stages 1-2) and the dataset card (Markdown with plots)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from unimedvl.data.manifest import Manifest
from unimedvl.data.schema import TASK_FAMILY, TASKS
from unimedvl.utils.figures import write_figure
from unimedvl.utils.files import atomic_write_text

INTERLEAVED_WITHOUT_DATA_NOTE = {
    "counterfactual": "needs pairs of the same patient with and without a finding; no such pairs are in this corpus's sources",
    "virtual_staining": "needs registered H&E / IHC pairs (e.g. BCI, MIST); none are in this corpus's sources",
    "cross_modal": "needs paired sequences of one patient (e.g. T2 / FLAIR); none are in this corpus's sources",
    "segmentation": "needs image + mask pairs; none are in this corpus's sources",
}


def _bar(path: Path, counts: dict[str, int], title: str) -> None:
    def draw(ax) -> None:  # noqa: ANN001
        names = list(counts)
        ax.barh(names, [counts[n] for n in names], color="#4472c4")
        ax.set_title(title)
        ax.invert_yaxis()

    write_figure(path, draw)


def write_qc_reports(out: Path, config: Any, stats: dict[str, Any], errors: list[dict[str, str]],
                     per_source: dict[str, Any]) -> None:
    qc = out / "qc"
    error_counts = Counter(e["source"] for e in errors)
    stage1 = {"input_errors": {"total": len(errors), "by_source": dict(sorted(error_counts.items())), "entries": errors},
              "rejected": dict(sorted(stats["stage1_rejected"].items())),
              "duplicates_and_leakage": dict(sorted(stats["duplicates_and_leakage"].items())),
              "limits": vars(config.stage1), "candidates": stats["candidates"], "sources": per_source}
    atomic_write_text(qc / "stage1.json", json.dumps(stage1, indent=2, sort_keys=True) + "\n")
    lines = ["# QC stage 1: coarse filters", "", f"Candidates: {stats['candidates']}", "",
             "| source | refs | records | candidates | unreadable / malformed inputs |", "|---|---|---|---|---|"]
    for name, s in per_source.items():
        lines.append(f"| {name} | {s['refs']} | {s['records']} | {s['candidates']} | {s['errors']} |")
    lines += ["", "| reason | samples rejected |", "|---|---|"]
    for reason, n in sorted({**stats["stage1_rejected"], **stats["duplicates_and_leakage"]}.items()):
        lines.append(f"| {reason} | {n} |")
    if errors:
        lines += ["", "## Inputs that could not be read", ""]
        lines += [f"- {e['source']} / {e['ref']}: {e['error']}" for e in errors[:200]]
        if len(errors) > 200:
            lines.append(f"- ... and {len(errors) - 200} more (qc/stage1.json)")
    atomic_write_text(qc / "stage1.md", "\n".join(lines) + "\n")

    scores = stats["stage2_scores"]
    summary = {m: {name: {k: s[k] for k in ("n", "mean", "min")} for name, s in by_scorer.items()}
               for m, by_scorer in scores.items()}
    stage2 = {"thresholds": stats["stage2_thresholds"], "rejected": dict(sorted(stats["stage2_rejected"].items())),
              "scores": summary, "histograms": {m: {n: s["hist"] for n, s in v.items()} for m, v in scores.items()}}
    atomic_write_text(qc / "stage2.json", json.dumps(stage2, indent=2, sort_keys=True) + "\n")
    lines = ["# QC stage 2: medical image-text alignment", "",
             f"Thresholds (score in [0, 1], reject below): {stats['stage2_thresholds']}", "",
             "| modality | scorer | samples | mean | min |", "|---|---|---|---|---|"]
    for modality, by_scorer in sorted(summary.items()):
        for name, s in by_scorer.items():
            lines.append(f"| {modality} | {name} | {s['n']} | {s['mean']} | {s['min']} |")
    lines += ["", "| reason | samples rejected |", "|---|---|"]
    lines += [f"| {r} | {n} |" for r, n in sorted(stats["stage2_rejected"].items())]
    if scores:
        def draw(ax) -> None:  # noqa: ANN001
            for modality, by_scorer in sorted(scores.items()):
                for name, s in sorted(by_scorer.items()):
                    bins = len(s["hist"])
                    ax.stairs(s["hist"], [i / bins for i in range(bins + 1)], label=f"{modality} / {name}")
            ax.set_xlabel("alignment score")
            ax.set_ylabel("samples")
            ax.legend(fontsize=7)

        write_figure(qc / "stage2_scores.png", draw)
        lines += ["", "![score histogram](stage2_scores.png)"]
    atomic_write_text(qc / "stage2.md", "\n".join(lines) + "\n")


def write_card(out: Path, manifest: Manifest, image_sizes: list[tuple[str, int, int]], stats: dict[str, Any],
               config: Any) -> None:
    from unimedvl.data.qc.review import agreement_report

    plots = out / "plots"
    counts = manifest.counts
    if counts["modality"]:
        _bar(plots / "modality.png", counts["modality"], "samples per modality")
        _bar(plots / "task.png", counts["task"], "samples per task")
    if image_sizes:
        by_modality: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for modality, w, h in image_sizes:
            by_modality[modality].append((w, h))

        def draw(ax) -> None:  # noqa: ANN001
            for modality, sizes in sorted(by_modality.items()):
                ax.scatter([w for w, _ in sizes], [h for _, h in sizes], s=6, alpha=0.6, label=modality)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("width (px)")
            ax.set_ylabel("height (px)")
            ax.legend(fontsize=7)

        write_figure(plots / "resolution.png", draw)
    review = agreement_report(out)
    present = set(counts["task"])
    sources = manifest.origin["sources"]
    lines = [f"# Dataset card: {manifest.name}", "",
             f"{manifest.total} samples (schema `{manifest.schema}`) built by `unimedvl data build` from "
             f"{len(sources)} source(s). Splits are by patient / study group, with no image shared "
             "between train and val/test.", "",
             "## Counts", "", "| split | samples |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in counts["split"].items()]
    lines += ["", "| modality | samples |", "|---|---|"] + [f"| {k} | {v} |" for k, v in counts["modality"].items()]
    lines += ["", "| task | family | samples |", "|---|---|---|"]
    lines += [f"| {k} | {TASK_FAMILY[k]} | {v} |" for k, v in counts["task"].items()]
    lines += ["", "![modality](plots/modality.png) ![task](plots/task.png)", "", "## Image resolution", "",
              "![resolution](plots/resolution.png)", "", "## Sources and licences", "",
              "| source | adapter | licence | redistributable | records | unreadable inputs |", "|---|---|---|---|---|---|"]
    for name, s in sources.items():
        lines.append(f"| {name} | {s['adapter']} | {s['licence']} | {'yes' if s['redistributable'] else 'no'} | "
                     f"{s['records']} | {s['errors']} |")
    missing = [t for t in TASKS if t not in present]
    lines += ["", "## Tasks without data in this corpus", ""]
    if missing:
        for task in missing:
            note = INTERLEAVED_WITHOUT_DATA_NOTE.get(task, "no source of this corpus enables it")
            lines.append(f"- `{task}`: {note}. Not faked: no sample of this task is made without real paired data.")
    else:
        lines.append("- none")
    lines += ["", "## Quality control", "",
              f"- stage 1 (coarse): {sum(stats['stage1_rejected'].values())} rejections by rule, "
              f"{sum(stats['duplicates_and_leakage'].values())} duplicates / leakage removed (qc/stage1.md);",
              f"- stage 2 (alignment): {sum(stats['stage2_rejected'].values())} below threshold (qc/stage2.md);",
              f"- stage 3 (expert review): {review['reviews']} reviews so far (qc/stage3/report.md).", "",
              "Text marked `template_made` was generated from labels by templates (several phrasings per question); "
              "it is not expert-written.", "",
              "## Known limitations", "",
              "- Sources without patient identifiers (e.g. MedMNIST) are split per image; related images of one patient "
              "may then fall in different splits.",
              "- The built-in alignment scorer is a transparent heuristic (modality words and colour); plug in "
              "BiomedCLIP / MedSigLIP weights or an LLM judge for stronger filtering (qc.stage2.scorers)."]
    atomic_write_text(out / "README.md", "\n".join(lines) + "\n")
