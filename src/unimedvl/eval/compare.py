"""Side-by-side tables of finished `unimedvl eval` runs (`unimedvl eval compare v1=DIR v2=DIR ...`).

A model card's "v1 against v2" tables come from the runs' own `results.json` files, never typed by hand.
A run folder is recognised by what it holds: `eval all` (one sub-folder per benchmark), one benchmark,
`eval generation` (`per_modality` with `recognised`) or `eval edits` (`task`). Runs of different kinds
can be given together: each kind gets its own tables, in the order the runs were given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from unimedvl.errors import InputError
from unimedvl.eval.report import above_majority, check_cells, with_interval


@dataclass(frozen=True)
class Run:
    """One finished evaluation: its label, its kind, and its results (benchmark name -> results for understanding)."""

    label: str
    kind: str
    results: dict


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not a readable results.json ({error})") from None


def load_run(label: str, folder: str | Path) -> Run:
    """Read one run folder; a clear error names a folder that holds no finished evaluation."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{label}: {folder} is not a folder")
    single = folder / "results.json"
    if single.is_file():
        results = _read(single)
        if "task" in results and "per_modality" in results:
            return Run(label, "edits", results)
        if "per_modality" in results and "distance" in results:
            return Run(label, "generation", results)
        if "benchmark" in results:
            return Run(label, "understanding", {results["benchmark"]: results})
        raise InputError(f"{single}: not the results of `unimedvl eval` (no benchmark, task or per_modality)")
    benchmarks = {}
    for sub in sorted(folder.iterdir()):
        if (sub / "results.json").is_file():
            results = _read(sub / "results.json")
            if "benchmark" in results:
                benchmarks[results["benchmark"]] = results
    if not benchmarks:
        raise InputError(f"{label}: {folder} holds no results.json (is the evaluation finished? shards need "
                         "`unimedvl eval merge`)")
    return Run(label, "understanding", benchmarks)


def parse_runs(specs: list[str]) -> list[Run]:
    """`LABEL=DIR` (or a bare DIR, labelled by its name) for each run."""
    if not specs:
        raise InputError("give at least one run: LABEL=DIR")
    runs = []
    for spec in specs:
        label, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        runs.append(load_run(label or Path(path).name, path))
    return runs


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


PHRASINGS = ("original", "paraphrase 1", "paraphrase 2", "flipped")


def _phrasing_cell(phrasing: dict, variant: str) -> str:
    """Accuracy under one phrasing, and how many answers said neither yes nor no ("57.7 (26 not yes / no)")."""
    off = phrasing.get("not_yes_no", {}).get(variant)
    return _pct(phrasing["accuracy_per_phrasing"].get(variant)) + (f" ({off} not yes / no)" if off else "")


def understanding_tables(runs: list[Run]) -> list[str]:
    names = list(dict.fromkeys(name for run in runs for name in run.results))
    summary, phrasing, groups = [], [], {}
    for name in names:
        for run in runs:
            r = run.results.get(name)
            if r is None or "accuracy" not in r:
                continue
            checks = r.get("checks", {})
            phr = checks.get("phrasing")
            summary.append([name, run.label, str(r["n"]), with_interval(r["accuracy"], r.get("accuracy_interval")),
                            above_majority(r.get("majority_baseline") or {}), *check_cells(checks)])
            breakdowns = r.get("breakdowns", {})
            if phr and phr.get("n"):
                class_name = breakdowns.get("question_type", {}).get("class name", {})
                labels = ", ".join(f"{k} {_pct(v['accuracy'])}" for k, v in breakdowns.get("label", {}).items())
                phrasing.append([name, run.label, *(_phrasing_cell(phr, v) for v in PHRASINGS),
                                 _pct(class_name.get("accuracy")), labels or "-"])
            elif len(breakdowns.get("modality", {})) > 1:
                groups[run.label] = breakdowns["modality"]
    lines = ["## Understanding (`unimedvl eval all`)", ""]
    lines += _table(["benchmark", "model", "n", "accuracy (95 % interval)", "majority (p model above)",
                     "real / blank / noise", "phrasing agreement",
                     "native / half / 28 px"], summary)
    if phrasing:
        lines += ["", "Accuracy per phrasing (paraphrases 1 and 2: phrasings no training template produces):", ""]
        lines += _table(["set", "model", "original", "paraphrase 1", "paraphrase 2", "flipped", "class-name questions",
                         "per label"], phrasing)
    if groups:
        modalities = list(dict.fromkeys(m for per in groups.values() for m in per))
        lines += ["", "Modality questions, accuracy per modality (n held-out images):", ""]
        lines += _table(["model", *modalities], [
            [label, *(f"{_pct(per[m]['accuracy'])} (n {per[m]['n']})" if m in per else "-" for m in modalities)]
            for label, per in groups.items()])
    return lines


def generation_tables(runs: list[Run]) -> list[str]:
    modalities = list(dict.fromkeys(m for run in runs for m in run.results["per_modality"]))
    rows = []
    for run in runs:
        per, distance = run.results["per_modality"], run.results.get("distance", {})
        auroc = per.get("chest_xray", {}).get("pneumonia_auroc")
        d_prompts, d_seeds = distance.get("between_prompts_same_seed"), distance.get("between_seeds_same_prompt")
        rows.append([run.label, str(run.results.get("size", "-")),
                     *(with_interval(per[m]["recognised"], per[m].get("recognised_interval"), percent=False)
                       if m in per else "-" for m in modalities),
                     "-" if auroc is None else f"{auroc:.2f}",
                     f"{'-' if d_prompts is None else f'{d_prompts:.3f}'} / {'-' if d_seeds is None else f'{d_seeds:.3f}'}"])
    return ["## Generation (`unimedvl eval generation`): share recognised by the judge as the requested modality "
            "(95 % interval)", "",
            *_table(["model", "size", *modalities, "pneumonia AUROC", "distance prompts / seeds"], rows)]


def _edit_cell(row: dict, baseline: str) -> str:
    cell = f"{row['psnr']:.1f} vs {row[f'{baseline}_psnr']:.1f} ({row['beats_baseline_psnr']}/{row['n']})"
    if "vae_round_trip_psnr" in row:  # runs written before the ceilings were measured have none
        cell += f"; ceilings {row['vae_round_trip_psnr']:.1f} / {row['vae_residual_psnr']:.1f}"
    return cell


def edit_tables(runs: list[Run]) -> list[str]:
    lines = []
    for task in dict.fromkeys(run.results["task"] for run in runs):
        mine = [run for run in runs if run.results["task"] == task]
        baseline = mine[0].results.get("baseline", "baseline")
        modalities = list(dict.fromkeys(m for run in mine for m in run.results["per_modality"]))
        rows = []
        for run in mine:
            per = run.results["per_modality"]
            rows.append([run.label, str(run.results.get("size", "-")),
                         *(_edit_cell(per[m], baseline) if m in per else "-" for m in modalities)])
        lines += [f"## Editing, {task} (`unimedvl eval edits`): PSNR dB of the model vs {baseline} "
                  f"(images above {baseline} / held-out images); the VAE's ceilings: the target's round trip / "
                  f"{baseline} + the latent difference", "",
                  *_table(["model", "size", *modalities], rows), ""]
    return lines[:-1]


def compare(runs: list[Run]) -> str:
    """The markdown tables of every kind present, runs in the order given."""
    sections = []
    for kind, tables in (("understanding", understanding_tables), ("generation", generation_tables),
                         ("edits", edit_tables)):
        mine = [run for run in runs if run.kind == kind]
        if mine:
            sections.append("\n".join(tables(mine)))
    return "\n\n".join(sections) + "\n"
