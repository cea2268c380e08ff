"""GMAI-MMBench (Chen et al. 2024) as VLMEvalKit ships it: one TSV (`GMAI-MMBench_VAL.tsv` or `_TEST.tsv`).

Columns: `index`, `image` (base64; VLMEvalKit stores a repeated image once and later rows hold the
index of the row that has it), `question`, options `A` ... `E`, `answer` (a letter), `category`,
`l2-category`, `split`, `clinical vqa task`, `department`, `perceptual granularity`.
"""

from __future__ import annotations

from pathlib import Path

from unimedvl.eval.benchmarks.base import BenchmarkDataError, EvalItem, decode_base64, field_of, read_tsv

GROUPS = ("category", "l2-category", "clinical vqa task", "department", "perceptual granularity")


def tsv_file(root: Path) -> Path:
    if root.is_file():
        return root
    files = sorted(root.glob("GMAI-MMBench*.tsv")) or sorted(root.glob("*.tsv"))
    if not files:
        raise BenchmarkDataError(f"GMAI-MMBench: no .tsv file in {root} (VLMEvalKit's GMAI-MMBench_VAL.tsv)")
    return files[0]


def load(root: Path) -> list[EvalItem]:
    path = tsv_file(root)
    rows = read_tsv(path, "GMAI-MMBench TSV")
    if rows and "image" not in rows[0]:
        raise BenchmarkDataError(f"{path.name}: no 'image' column (columns: {', '.join(rows[0])})")
    by_index = {str(r.get("index")): r for r in rows}
    items = []
    for number, row in enumerate(rows, start=1):
        where = f"{path.name}: row {number}"
        raw = str(field_of(row, "image", where))
        if len(raw) <= 64 and raw in by_index and by_index[raw] is not row:  # a reference to another row's image
            raw = str(field_of(by_index[raw], "image", f"{path.name}: row with index {raw}"))
        options = tuple((letter, str(row[letter]).strip()) for letter in "ABCDE"
                        if row.get(letter) not in (None, "", "nan"))
        answer = str(field_of(row, "answer", where)).strip().upper()
        if answer not in dict(options):
            raise BenchmarkDataError(f"{where}: field 'answer' {answer!r} names no option")
        items.append(EvalItem(id=str(field_of(row, "index", where)), question=str(field_of(row, "question", where)).strip(),
                              answer=answer, kind="choice", image=decode_base64(raw, where), options=options,
                              groups={g.replace(" ", "_"): str(row.get(g) or "unknown") for g in GROUPS}))
    return items
