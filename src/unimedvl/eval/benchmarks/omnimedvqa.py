"""OmniMedVQA (Hu et al. 2024), open-access part: `QA_information/Open-access/*.json` + `Images/`.

Every JSON file (one per source dataset; all of them are read, not a subset) holds items with
`question`, `gt_answer`, `option_A` ... `option_D` (some have fewer), `image_path` (relative to the
release root), `question_type` and `modality_type`. Scored as multiple choice.
"""

from __future__ import annotations

from pathlib import Path

from unimedvl.eval.benchmarks.base import BenchmarkDataError, EvalItem, field_of, image_file, read_json_list

QA_DIR = Path("QA_information") / "Open-access"


def load(root: Path) -> list[EvalItem]:
    files = sorted((root / QA_DIR).glob("*.json"))
    if not files:
        raise BenchmarkDataError(f"OmniMedVQA: no JSON files in {root / QA_DIR}")
    items = []
    for path in files:
        for number, entry in enumerate(read_json_list(path, "OmniMedVQA QA file"), start=1):
            where = f"{path.name}: item {number}"
            options = tuple((letter, str(entry[f"option_{letter}"]).strip()) for letter in "ABCD"
                            if entry.get(f"option_{letter}") not in (None, ""))
            if len(options) < 2:
                raise BenchmarkDataError(f"{where}: fewer than two of the fields 'option_A'..'option_D'")
            truth = str(field_of(entry, "gt_answer", where)).strip()
            letters = [letter for letter, text in options if text == truth]
            if not letters:
                raise BenchmarkDataError(f"{where}: field 'gt_answer' {truth!r} is none of the options")
            items.append(EvalItem(
                id=str(entry.get("question_id", f"{path.stem}-{number}")),
                question=str(field_of(entry, "question", where)).strip(), answer=letters[0], kind="choice",
                image=image_file(root, str(field_of(entry, "image_path", where)), where), options=options,
                groups={"modality": str(entry.get("modality_type", "unknown")),
                        "question_type": str(entry.get("question_type", "unknown")), "dataset": path.stem}))
    return items
