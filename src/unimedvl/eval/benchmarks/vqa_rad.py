"""VQA-RAD (Lau et al. 2018), the OSF release: `VQA_RAD Dataset Public.json` + `VQA_RAD Image Folder/`.

The test split is the items whose `phrase_type` starts with `test` (`test_freeform`, `test_para`),
451 questions; `answer_type` is CLOSED (yes/no and choices) or OPEN.
"""

from __future__ import annotations

from pathlib import Path

from unimedvl.eval.benchmarks.base import BenchmarkDataError, EvalItem, field_of, image_file, read_json_list

ANNOTATIONS = "VQA_RAD Dataset Public.json"
IMAGES = "VQA_RAD Image Folder"


def load(root: Path) -> list[EvalItem]:
    path = root / ANNOTATIONS
    items = []
    for number, entry in enumerate(read_json_list(path, "VQA-RAD annotations"), start=1):
        where = f"{ANNOTATIONS}: item {number}"
        if not str(field_of(entry, "phrase_type", where)).startswith("test"):
            continue
        answer_type = str(field_of(entry, "answer_type", where)).strip().upper()
        if answer_type not in ("OPEN", "CLOSED"):
            raise BenchmarkDataError(f"{where}: field 'answer_type' must be OPEN or CLOSED, got {answer_type!r}")
        image = image_file(root / IMAGES, str(field_of(entry, "image_name", where)), where)
        items.append(EvalItem(
            id=str(entry.get("qid", number)), question=str(field_of(entry, "question", where)).strip(),
            answer=str(field_of(entry, "answer", where)).strip(), kind="closed" if answer_type == "CLOSED" else "open",
            image=image, groups={"answer_type": answer_type.lower(),
                                 "organ": str(entry.get("image_organ", "")).strip().lower() or "unknown"}))
    return items
