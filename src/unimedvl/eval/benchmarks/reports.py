"""Report generation on an IU X-ray-style table: `reports.csv` with `image` (a file under the folder)
and `findings` and / or `impression`; the reference report is "Findings: ... Impression: ...".

Scored with BLEU-1..4, METEOR, ROUGE-L and CIDEr (`eval/metrics/text.py`).
"""

from __future__ import annotations

import csv
from pathlib import Path

from unimedvl.eval.benchmarks.base import BenchmarkDataError, EvalItem, field_of, image_file, require_file

TABLE = "reports.csv"
PROMPT = "Write the findings and impression of a radiology report for this chest X-ray."


def reference_text(findings: str, impression: str) -> str:
    return " ".join(x for x in (f"Findings: {findings}" if findings else "",
                                f"Impression: {impression}" if impression else "") if x)


def load(root: Path) -> list[EvalItem]:
    path = require_file(root / TABLE, "report table")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    items = []
    for number, row in enumerate(rows, start=1):
        where = f"{TABLE}: row {number}"
        findings, impression = (row.get("findings") or "").strip(), (row.get("impression") or "").strip()
        if not findings and not impression:
            raise BenchmarkDataError(f"{where}: fields 'findings' and 'impression' are both empty")
        name = str(field_of(row, "image", where))
        items.append(EvalItem(id=row.get("id") or name, question=PROMPT, answer=reference_text(findings, impression),
                              kind="report", image=image_file(root, name, where),
                              groups={"modality": row.get("modality") or "chest_xray"}))
    return items
