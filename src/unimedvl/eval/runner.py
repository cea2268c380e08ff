"""One runner for every benchmark: select items, answer them (resumably, in batches), score, check, report.

    OUT/predictions.jsonl        one line per item: id, question, answer (reference), prediction, correct, groups
    OUT/checks/<check>.jsonl     the variant items of each check, answered the same way
    OUT/results.json             accuracy, breakdowns, checks, model, data checksum, seed, versions
    OUT/report.md (+ .png)       the same for people, with the published numbers as reference rows

A rerun reuses every answered line (a torn last line is dropped). `--shard i/n` answers every n-th
item into `OUT/shard-i-of-n/`; `merge` then gives the results one process gives.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from PIL import Image

from unimedvl.errors import InputError
from unimedvl.eval import checks as checks_mod
from unimedvl.eval.benchmarks.base import Benchmark, EvalItem, data_checksum
from unimedvl.eval.predictors import Predictor, Request
from unimedvl.eval.prompts import prompt_for
from unimedvl.eval.scoring import normalise, score
from unimedvl.utils.files import atomic_write_text

REPORT_TOKENS = 160  # new tokens for a report; short answers get `max_new_tokens`


@dataclass(frozen=True)
class RunOptions:
    limit: int | None = None  # the first N items of a seeded order (the same N for every model)
    seed: int = 0
    shard: tuple[int, int] = (0, 1)  # (i, n): every n-th item, starting at i
    checks: tuple[str, ...] = checks_mod.CHECKS
    batch_size: int = 8
    max_new_tokens: int = 32
    judge: object | None = None  # an LLMJudge: open answers also graded by meaning (judge_correct)

    def __post_init__(self) -> None:
        i, n = self.shard
        if not 0 <= i < n:
            raise InputError(f"--shard must be i/n with 0 <= i < n, got {i}/{n}")
        if self.limit is not None and self.limit < 1:
            raise InputError(f"--limit must be at least 1, got {self.limit}")
        unknown = sorted(set(self.checks) - set(checks_mod.CHECKS))
        if unknown:
            raise InputError(f"unknown check(s) {unknown}; choose from {list(checks_mod.CHECKS)}")


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise InputError(f"--shard must look like 0/2, got {text!r}") from None
    RunOptions(shard=(i, n))
    return i, n


def select(items: list[EvalItem], options: RunOptions) -> list[EvalItem]:
    """A seeded order (by a hash of seed and id, so it does not depend on file order), cut to `limit`, then the shard."""
    order = sorted(items, key=lambda it: hashlib.sha256(f"{options.seed}\x1f{it.id}".encode()).hexdigest())
    chosen = order[: options.limit] if options.limit else order
    i, n = options.shard
    return chosen[i::n]


# ------------------------------------------------------------------ answering
class PredictionLog:
    """An append-only JSONL of answered items, keyed by id; what is there is not asked again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict] = {}
        if not path.is_file():
            return
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        torn = bool(text) and not text.endswith("\n")
        for line in lines[:-1] if torn else lines:  # a torn last line (killed mid-write) is answered again
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                torn = True
                continue
            self.records[record["id"]] = record
        if torn:  # keep only whole lines, so appends start on a fresh line
            atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.records.values()))

    def add(self, records: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                self.records[record["id"]] = record
            handle.flush()


def _request(item: EvalItem, options: RunOptions) -> Request:
    image = Image.open(io.BytesIO(item.image_bytes())).convert("RGB")
    tokens = REPORT_TOKENS if item.kind == "report" else options.max_new_tokens
    return Request(image=image, prompt=prompt_for(item), max_new_tokens=tokens)


def record_for(item: EvalItem, prediction: str) -> dict:
    record = {**item.groups, "id": item.id, "question": item.question, "answer": item.answer, "prediction": prediction,
              "kind": item.kind}
    if item.kind == "report":
        record["correct"] = None
        return record
    result = score(item, prediction)
    record["correct"] = result.correct
    if item.kind == "choice":
        record.update(parsed=result.parsed, choice=result.choice, options=dict(item.options))
    if item.kind == "open":
        record["recall"] = result.recall
    if checks_mod.is_yes_no(item):
        first = normalise(prediction).split(" ", 1)[0]
        record["verdict"] = first if first in ("yes", "no") else None
    return record


def answer(items: list[EvalItem], predictor: Predictor, log: PredictionLog, options: RunOptions,
           progress: Callable[[int, int], None] | None = None) -> None:
    pending = [it for it in items if it.id not in log.records]
    done = len(items) - len(pending)
    for start in range(0, len(pending), options.batch_size):
        batch = pending[start:start + options.batch_size]
        predictions = predictor.predict([_request(it, options) for it in batch])
        records = [record_for(it, p) for it, p in zip(batch, predictions)]
        if options.judge is not None:
            for item, record in zip(batch, records):
                if item.kind == "open":
                    record["judge_correct"] = options.judge.grade(item.question, item.answer, record["prediction"])
        log.add(records)
        if progress:
            progress(done + start + len(batch), len(items))


# ------------------------------------------------------------------ results
def _rate(rows: list[dict], key: str = "correct") -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def breakdowns(rows: list[dict], fields: Iterable[str]) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for name in fields:
        values = sorted({str(r[name]) for r in rows if name in r})
        out[name] = {v: {"n": sum(str(r.get(name)) == v for r in rows),
                         "accuracy": _rate([r for r in rows if str(r.get(name)) == v])} for v in values}
    return out


def _answer_group(row: dict) -> str:
    if row["kind"] == "closed" and normalise(row["answer"]) in ("yes", "no"):
        return "yes/no"
    return row["kind"]


def majority_baseline(rows: list[dict]) -> dict[str, object] | None:
    """Always giving the most common reference answer of each answer group (yes / no questions, other closed
    questions, multiple-choice letters): the bar a guesser that ignores the image reaches.

    Whether the model is above it is tested on the same questions, paired: the questions only the model
    answers right against those only the guesser does (one-sided exact McNemar, `p_above`)."""
    scored = [r for r in rows if r["kind"] in ("closed", "choice")]
    if not scored:
        return None
    answers: dict[str, str] = {}
    right = 0
    for group in sorted({_answer_group(r) for r in scored}):
        counts = Counter(normalise(r["answer"]) for r in scored if _answer_group(r) == group)
        top = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        answers[group], right = top[0], right + top[1]
    guessed = [(bool(r.get("correct")), normalise(r["answer"]) == answers[_answer_group(r)]) for r in scored]
    model_only = sum(model and not guess for model, guess in guessed)
    baseline_only = sum(guess and not model for model, guess in guessed)
    return {"answers": answers, "accuracy": right / len(scored), "n": len(scored), "model_only_right": model_only,
            "baseline_only_right": baseline_only, "p_above": checks_mod.sign_test_p(model_only, baseline_only)}


# The fields `record_for` writes itself; every other field of a record is one of the benchmark's groups.
RECORD_FIELDS = frozenset({"id", "question", "answer", "prediction", "correct", "kind", "parsed", "choice", "options",
                           "recall", "verdict", "judge_correct"})


def summarise(benchmark: Benchmark, rows: list[dict], check_rows: dict[str, list[dict]]) -> dict:
    rows = sorted(rows, key=lambda r: r["id"])
    groups = sorted({k for r in rows for k in r} - RECORD_FIELDS)
    result: dict[str, object] = {"benchmark": benchmark.name, "title": benchmark.title, "n": len(rows)}
    if rows and rows[0]["kind"] == "report":
        from unimedvl.eval.metrics.text import report_metrics

        result["metrics"] = report_metrics([r["prediction"] for r in rows], [r["answer"] for r in rows])
        return result
    answered = [r["correct"] for r in rows if r.get("correct") is not None]
    result["accuracy"] = sum(answered) / len(answered) if answered else None  # as `_rate(rows)`
    result["accuracy_interval"] = checks_mod.wilson_interval(sum(answered), len(answered))  # per question, 95 %
    result["by_kind"] = {k: {"n": sum(r["kind"] == k for r in rows), "accuracy": _rate([r for r in rows if r["kind"] == k])}
                         for k in sorted({r["kind"] for r in rows})}
    if any(r["kind"] == "open" for r in rows):
        result["open_token_recall"] = _rate([r for r in rows if r["kind"] == "open"], "recall")
    judged = [r for r in rows if "judge_correct" in r]
    if judged:
        result["open_judge"] = {"accuracy": _rate(judged, "judge_correct"),
                                "no_verdict": sum(r["judge_correct"] is None for r in judged), "n": len(judged)}
    if any(r["kind"] == "choice" for r in rows):
        result["unparseable"] = sum(r["kind"] == "choice" and not r["parsed"] for r in rows)
    result["majority_baseline"] = majority_baseline(rows)
    result["breakdowns"] = breakdowns(rows, groups)
    result["checks"] = summarise_checks(rows, check_rows)
    return result


def _outcomes(rows: list[dict]) -> list[checks_mod.Outcome]:
    return [checks_mod.Outcome(r["id"], r["of"], r["variant"], bool(r["correct"]), r.get("verdict"))
            for r in sorted(rows, key=lambda r: r["id"])]


def summarise_checks(rows: list[dict], check_rows: dict[str, list[dict]]) -> dict:
    base = {r["id"]: bool(r["correct"]) for r in rows}
    out: dict[str, object] = {}
    blank = _outcomes(check_rows.get("image_dependence", []))
    if "image_dependence" in check_rows:
        out["image_dependence"] = checks_mod.summarise_image_dependence(base, blank)
    yes_no = {r["id"]: checks_mod.Outcome(r["id"], r["id"], "original", bool(r["correct"]), r.get("verdict"))
              for r in rows if "verdict" in r}
    if "phrasing" in check_rows and yes_no:  # without yes / no items the check does not apply: no verdict
        out["phrasing"] = checks_mod.summarise_phrasing(yes_no, _outcomes(check_rows["phrasing"]))
    if "resolution" in check_rows and blank:
        out["resolution"] = checks_mod.summarise_resolution(base, _outcomes(check_rows["resolution"]), blank)
    return out


def versions() -> dict[str, str]:
    import numpy
    import torch

    import unimedvl

    return {"unimedvl": unimedvl.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version(), "machine": platform.machine()}


# ------------------------------------------------------------------ the run
def run_benchmark(benchmark: Benchmark, data_dir: Path, predictor: Predictor, out: Path, *,
                  options: RunOptions = RunOptions(), model: dict | None = None,
                  progress: Callable[[str], Callable[[int, int], None]] | None = None) -> dict:
    """Answer, score and check one benchmark into `out` (a shard folder when `options.shard` splits it)."""
    items = benchmark.load(data_dir)
    if not items:
        raise InputError(f"{benchmark.name}: no items found in {data_dir}")
    chosen = select(items, options)
    sharded = options.shard[1] > 1
    folder = out / f"shard-{options.shard[0]}-of-{options.shard[1]}" if sharded else out
    folder.mkdir(parents=True, exist_ok=True)
    log = PredictionLog(folder / "predictions.jsonl")
    answer(chosen, predictor, log, options, progress("answers") if progress else None)
    check_logs = {}
    scorable = [it for it in chosen if it.kind != "report"]
    for check in options.checks if scorable else ():
        variants = checks_mod.variants(check, scorable)
        check_logs[check] = PredictionLog(folder / "checks" / f"{check}.jsonl")
        answer(variants, predictor, check_logs[check], options, progress(check) if progress else None)
    meta = {"benchmark": benchmark.name, "data": str(data_dir), "data_checksum": data_checksum(items),
            "items_total": len(items), "limit": options.limit, "seed": options.seed, "checks_run": list(options.checks),
            "model": model or {"name": predictor.name}, "versions": versions()}
    atomic_write_text(folder / "run.json", json.dumps({**meta, "shard": list(options.shard)}, indent=2) + "\n")
    if sharded:
        return meta
    return finish(benchmark, out, meta, list(log.records.values()),
                  {c: list(l.records.values()) for c, l in check_logs.items()})


def finish(benchmark: Benchmark, out: Path, meta: dict, rows: list[dict], check_rows: dict[str, list[dict]]) -> dict:
    from unimedvl.eval.report import write_report

    results = {**summarise(benchmark, rows, check_rows), **{k: v for k, v in meta.items() if k != "benchmark"}}
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, sort_keys=True) + "\n")
    write_report(out, results, benchmark)
    return results


def merge_shards(benchmark: Benchmark, out: Path) -> dict:
    """Combine `OUT/shard-*-of-n/` into the results one process writes (same scores, same file)."""
    folders = sorted(out.glob("shard-*-of-*"))
    if not folders:
        raise InputError(f"{out} holds no shard-*-of-* folders to merge")
    counts = {f.name.rsplit("-of-", 1)[1] for f in folders}
    metas = [json.loads((f / "run.json").read_text()) for f in folders if (f / "run.json").is_file()]
    if len(counts) != 1 or len(metas) != int(counts.pop()):
        raise InputError(f"{out}: incomplete shards ({len(metas)} finished of {[f.name for f in folders]})")
    rows = [r for f in folders for r in PredictionLog(f / "predictions.jsonl").records.values()]
    check_rows: dict[str, list[dict]] = {}
    for f in folders:
        for path in sorted((f / "checks").glob("*.jsonl")):
            check_rows.setdefault(path.stem, []).extend(PredictionLog(path).records.values())
    meta = {k: v for k, v in metas[0].items() if k != "shard"}
    return finish(benchmark, out, meta, rows, check_rows)


def log_progress(label: str) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        print(f"\r{label}: {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)

    return report
