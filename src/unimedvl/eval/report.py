"""`report.md` for one benchmark (with a per-group bar chart) and the combined report of `eval all`."""

from __future__ import annotations

from pathlib import Path

from unimedvl.eval.benchmarks.base import Benchmark
from unimedvl.utils.figures import write_figure
from unimedvl.utils.files import atomic_write_text

CHART_GROUPS = ("modality", "organ", "category", "answer_type")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def with_interval(value: float | None, interval: list[float] | None, *, percent: bool = True) -> str:
    """"73.1 (66.0-79.5)": a rate and its 95 % interval (runs written before intervals were kept show the rate)."""
    show = _pct if percent else (lambda v: f"{v:.2f}")
    if value is None or not interval:
        return show(value)
    return f"{show(value)} ({show(interval[0])}-{show(interval[1])})"


def above_majority(base: dict) -> str:
    """The majority baseline's accuracy and the paired p that the model is above it: "73.1 (p 0.50)"."""
    if not base:
        return "n/a"
    return _pct(base.get("accuracy")) + (f" (p {base['p_above']:.2g})" if "p_above" in base else "")


def _chart(path: Path, title: str, values: dict[str, dict]) -> None:
    names = list(values)

    def draw(ax) -> None:  # noqa: ANN001
        ax.barh(names, [100 * (values[n]["accuracy"] or 0) for n in names], color="#4472c4")
        for y, n in enumerate(names):
            ax.text(1, y, f"n={values[n]['n']}", va="center", color="white", fontsize=8)
        ax.set_xlim(0, 100)
        ax.set_xlabel("accuracy (%)")
        ax.set_title(title)
        ax.invert_yaxis()

    write_figure(path, draw, size=(6.4, 0.4 * len(names) + 1.2))


def check_lines(checks: dict) -> list[str]:
    lines = []
    if "image_dependence" in checks:
        c = checks["image_dependence"]
        lines.append(f"| image dependence | real {_pct(c['accuracy'])} / blank {_pct(c['blank']['accuracy'])} / noise "
                     f"{_pct(c['noise']['accuracy'])} (p {c['blank']['p']:.3g} / {c['noise']['p']:.3g}) | "
                     f"{'pass' if c['passed'] else 'FAIL'} |")
    if "phrasing" in checks:
        c = checks["phrasing"]
        per = ", ".join(f"{k} {_pct(v)}" for k, v in c["accuracy_per_phrasing"].items())
        off = ", ".join(f"{k} {n}" for k, n in c.get("not_yes_no", {}).items() if n)
        off = f"; answered neither yes nor no: {off}" if off else ""
        lines.append(f"| phrasing consistency | agreement {_pct(c['agreement'])} on {c['n']} yes/no items; {per}{off} | "
                     f"{'pass' if c['passed'] else 'FAIL'} |")
    if "resolution" in checks:
        c = checks["resolution"]
        lines.append(f"| resolution | native {_pct(c['native'])} / half {_pct(c['half']['accuracy'])} / 28 px "
                     f"{_pct(c['28px']['accuracy'])} | {'pass' if c['passed'] else 'FAIL'} |")
    return lines


def check_cells(checks: dict) -> list[str]:
    """Table cells of the three checks: real / blank / noise, phrasing agreement, native / half / 28 px."""
    dep, phr, res = checks.get("image_dependence"), checks.get("phrasing"), checks.get("resolution")
    verdict = lambda c: "pass" if c["passed"] else "FAIL"  # noqa: E731
    return [f"{_pct(dep['accuracy'])} / {_pct(dep['blank']['accuracy'])} / {_pct(dep['noise']['accuracy'])} "
            f"({verdict(dep)})" if dep else "-",
            f"{_pct(phr['agreement'])}% of {phr['n']} ({verdict(phr)})" if phr and phr["n"] else "-",
            f"{_pct(res['native'])} / {_pct(res['half']['accuracy'])} / {_pct(res['28px']['accuracy'])} "
            f"({verdict(res)})" if res else "-"]


def write_report(out: Path, results: dict, benchmark: Benchmark) -> None:
    model = results.get("model", {}).get("name", "model")
    lines = [f"# {benchmark.title}", "", f"Model: `{model}`; {results['n']} items (limit {results.get('limit')}, "
             f"seed {results.get('seed')}); data checksum `{results.get('data_checksum', '')[:16]}`.", ""]
    if "metrics" in results:
        m = results["metrics"]
        lines += ["| BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | METEOR | ROUGE-L | CIDEr |", "|---|---|---|---|---|---|---|",
                  "| " + " | ".join("n/a" if m[k] is None else f"{m[k]:.3f}"
                                   for k in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider")) + " |"]
        atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
        return
    base = results.get("majority_baseline") or {}
    accuracy = with_interval(results["accuracy"], results.get("accuracy_interval"))
    lines += ["| model | accuracy (%), 95 % interval |", "|---|---|", f"| **{model}** (this run) | **{accuracy}** |"]
    if base:
        said = ", ".join(f"{k}: \"{v}\"" for k, v in base["answers"].items())
        lines.append(f"| always the most common reference answer ({said}); p that the model is above it "
                     f"| {above_majority(base)} |")
    lines += [f"| {name} (published) | {value:.1f} |" for name, value in benchmark.reference.items()]
    if benchmark.reference:
        lines += ["", f"Published numbers: {benchmark.reference_source}; other splits, prompts and judges than this "
                  "run's, so they are reference rows, not a like-for-like comparison."]
    lines += ["", "| kind | n | accuracy (%) |", "|---|---|---|"]
    lines += [f"| {k} | {v['n']} | {_pct(v['accuracy'])} |" for k, v in results["by_kind"].items()]
    if "open_token_recall" in results:
        lines.append(f"\nOpen questions, token recall: {_pct(results['open_token_recall'])}%.")
    if "open_judge" in results:
        j = results["open_judge"]
        lines.append(f"\nOpen questions graded by meaning by an LLM judge: {_pct(j['accuracy'])}% of {j['n']} "
                     f"({j['no_verdict']} without a verdict); exact match stays the headline number.")
    if "unparseable" in results:
        lines.append(f"\nMultiple-choice answers naming no option (counted wrong): {results['unparseable']}.")
    if results.get("checks"):
        lines += ["", "## Does the model look at the image?", "", "| check | result | verdict |", "|---|---|---|",
                  *check_lines(results["checks"])]
    for group, values in results["breakdowns"].items():
        if len(values) < 2 and group not in CHART_GROUPS:
            continue
        lines += ["", f"## By {group}", "", f"| {group} | n | accuracy (%) |", "|---|---|---|"]
        lines += [f"| {v} | {s['n']} | {_pct(s['accuracy'])} |" for v, s in values.items()]
    charted = next((g for g in CHART_GROUPS if g in results["breakdowns"]), None)
    if charted:
        _chart(out / f"by_{charted}.png", f"{benchmark.title}: accuracy by {charted}", results["breakdowns"][charted])
        lines += ["", f"![accuracy by {charted}](by_{charted}.png)"]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")


def write_combined(out: Path, rows: list[tuple[Benchmark, dict]]) -> None:
    lines = ["# unimedvl eval all", "", "| benchmark | n | accuracy (%), 95 % interval | majority (%), p model above "
             "| image dependence: real / blank / "
             "noise | phrasing agreement | resolution: native / half / 28 px |", "|---|---|---|---|---|---|---|"]
    for benchmark, r in rows:
        if "metrics" in r:
            lines.append(f"| {benchmark.name} | {r['n']} | ROUGE-L {r['metrics']['rouge_l']:.3f} | | | | |")
            continue
        base = r.get("majority_baseline") or {}
        lines.append(f"| {benchmark.name} | {r['n']} | {with_interval(r['accuracy'], r.get('accuracy_interval'))} | "
                     f"{above_majority(base)} | "
                     + " | ".join(check_cells(r.get("checks", {}))) + " |")
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
