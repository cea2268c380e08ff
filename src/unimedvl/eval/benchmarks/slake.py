"""SLAKE (Liu et al. 2021): `test.json` + `imgs/xmlab<N>/source.jpg`; English items only (`q_lang == "en"`).

Groups: `answer_type` (OPEN / CLOSED), `modality` (CT, MRI, X-Ray) and `content_type` (organ, abnormality, ...).
"""

from __future__ import annotations

from pathlib import Path

from unimedvl.eval.benchmarks.base import BenchmarkDataError, EvalItem, field_of, image_file, read_json_list

ANNOTATIONS = "test.json"


def load(root: Path) -> list[EvalItem]:
    items = []
    for number, entry in enumerate(read_json_list(root / ANNOTATIONS, "SLAKE test split"), start=1):
        where = f"{ANNOTATIONS}: item {number}"
        if str(field_of(entry, "q_lang", where)) != "en":
            continue
        answer_type = str(field_of(entry, "answer_type", where)).strip().upper()
        if answer_type not in ("OPEN", "CLOSED"):
            raise BenchmarkDataError(f"{where}: field 'answer_type' must be OPEN or CLOSED, got {answer_type!r}")
        image = image_file(root / "imgs", str(field_of(entry, "img_name", where)), where)
        items.append(EvalItem(
            id=str(entry.get("qid", number)), question=str(field_of(entry, "question", where)).strip(),
            answer=str(field_of(entry, "answer", where)).strip(), kind="closed" if answer_type == "CLOSED" else "open",
            image=image, groups={"answer_type": answer_type.lower(),
                                 "modality": str(entry.get("modality", "unknown")).strip().lower(),
                                 "content_type": str(entry.get("content_type", "unknown")).strip().lower()}))
    return items
