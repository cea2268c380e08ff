"""MedXpertQA, multimodal subset (Zuo et al. 2025): `MM/test.jsonl` + `images/`.

Each line holds `id`, `question` (the options are listed inside it too), `options` ({letter: text}),
`label` (the letter), `images` (file names; the first is used) and `medical_task`, `body_system`,
`question_type` as groups.
"""

from __future__ import annotations

from pathlib import Path

from unimedvl.eval.benchmarks.base import BenchmarkDataError, EvalItem, field_of, image_file, read_jsonl

ANNOTATIONS = Path("MM") / "test.jsonl"


def load(root: Path) -> list[EvalItem]:
    items = []
    for number, entry in enumerate(read_jsonl(root / ANNOTATIONS, "MedXpertQA-MM test split"), start=1):
        where = f"{ANNOTATIONS}: line {number}"
        options = field_of(entry, "options", where)
        images = field_of(entry, "images", where)
        if not isinstance(options, dict) or not isinstance(images, list) or not images:
            raise BenchmarkDataError(f"{where}: 'options' must be an object and 'images' a non-empty list")
        label = str(field_of(entry, "label", where)).strip().upper()
        if label not in options:
            raise BenchmarkDataError(f"{where}: field 'label' {label!r} names no option")
        question = str(field_of(entry, "question", where)).split("\nAnswer Choices:")[0].strip()
        items.append(EvalItem(id=str(field_of(entry, "id", where)), question=question, answer=label, kind="choice",
                              image=image_file(root / "images", str(images[0]), where),
                              options=tuple((k, str(v)) for k, v in sorted(options.items())),
                              groups={g: str(entry.get(g, "unknown")) for g in ("medical_task", "body_system",
                                                                               "question_type")}))
    return items
