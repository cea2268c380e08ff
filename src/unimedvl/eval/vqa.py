"""Held-out VQA accuracy per question type, against the majority-class baseline of the train split.

Question types: the template variants (`modality`, `finding`, `yesno`) and `open` for real QA pairs.
Answers are compared after normalisation (lower case, punctuation and articles removed, "yes."="yes").
"""

from __future__ import annotations

import io
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from unimedvl.data.schema import Sample
from unimedvl.data.storage import iter_samples


def normalise(text: str) -> str:
    text = re.sub(r"<think>.*?</think>", "", text, flags=re.DOTALL).lower().strip()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(w for w in text.split() if w not in {"a", "an", "the"})


def question_type(sample: Sample) -> str:
    variant = sample.provenance.get("variant", "")
    return variant if variant in ("modality", "finding", "yesno") else "open"


def _qa(sample: Sample) -> tuple[str, str] | None:
    user = [it.text for it in sample.items if it.kind == "text" and not it.loss]
    answers = [it.text for it in sample.items if it.kind == "text" and it.loss]
    if sample.task != "vqa" or not user or len(answers) != 1 or not sample.images():
        return None
    return user[-1] or "", answers[0] or ""


@dataclass
class VQAResult:
    per_type: dict[str, dict[str, float]] = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)

    def table(self) -> list[str]:
        lines = ["| question type | n | accuracy | majority baseline | majority answer |", "|---|---|---|---|---|"]
        for kind, r in sorted(self.per_type.items()):
            lines.append(f"| {kind} | {int(r['n'])} | {r['accuracy']:.3f} | {r['baseline']:.3f} | {r['majority']} |")
        return lines


def majority_answers(corpus: str | Path, split: str = "train") -> dict[str, str]:
    counts: dict[str, Counter] = defaultdict(Counter)
    for sample in iter_samples(corpus, split):
        qa = _qa(sample)
        if qa:
            counts[question_type(sample)][normalise(qa[1])] += 1
    return {kind: c.most_common(1)[0][0] for kind, c in counts.items()}


def evaluate_vqa(engine, corpus: str | Path, *, splits: tuple[str, ...] = ("val", "test"),  # noqa: ANN001
                 limit_per_type: int = 200, max_new_tokens: int = 16) -> VQAResult:
    majority = majority_answers(corpus)
    hits: dict[str, list[bool]] = defaultdict(list)
    base: dict[str, list[bool]] = defaultdict(list)
    result = VQAResult()
    held_out = (s for split in splits for s in iter_samples(corpus, split))
    for sample in held_out:
        qa = _qa(sample)
        kind = question_type(sample)
        if not qa or len(hits[kind]) >= limit_per_type:
            continue
        question, truth = qa
        image = Image.open(io.BytesIO(sample.images()[0].data))
        answer = engine.ask([image], question, max_new_tokens=max_new_tokens).text
        hits[kind].append(normalise(answer) == normalise(truth))
        base[kind].append(majority.get(kind) == normalise(truth))
        if len(result.examples) < 12:
            result.examples.append({"type": kind, "modality": sample.modality, "question": question, "truth": truth,
                                    "answer": answer})
    for kind in hits:
        result.per_type[kind] = {"n": len(hits[kind]), "accuracy": sum(hits[kind]) / len(hits[kind]),
                                 "baseline": sum(base[kind]) / len(base[kind]), "majority": majority.get(kind, "")}
    return result
