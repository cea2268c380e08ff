"""PathVQA (He et al. 2020), the Hugging Face parquet release (`data/test-*.parquet`; never the pickles).

Rows hold `image` as a struct with `bytes` (and `path`), `question` and `answer`; a question is
closed when its answer is yes or no (about half the test split), open otherwise.
"""

from __future__ import annotations

from pathlib import Path

from unimedvl.eval.benchmarks.base import BenchmarkDataError, EvalItem, field_of, read_parquet


def test_files(root: Path) -> list[Path]:
    files = sorted(p for p in root.rglob("*.parquet") if p.name.startswith("test"))
    if not files:
        raise BenchmarkDataError(f"PathVQA: no test-*.parquet under {root} (the Hugging Face release's data/ folder)")
    return files


def load(root: Path) -> list[EvalItem]:
    items = []
    for path in test_files(root):
        for number, row in enumerate(read_parquet(path, "PathVQA test shard"), start=1):
            where = f"{path.name}: row {number}"
            image = field_of(row, "image", where)
            data = image.get("bytes") if isinstance(image, dict) else image
            if not isinstance(data, (bytes, bytearray)) or not data:
                raise BenchmarkDataError(f"{where}: field 'image' holds no image bytes")
            answer = str(field_of(row, "answer", where)).strip()
            closed = answer.lower() in ("yes", "no")
            items.append(EvalItem(id=f"{path.stem}-{number}", question=str(field_of(row, "question", where)).strip(),
                                  answer=answer, kind="closed" if closed else "open", image=bytes(data),
                                  groups={"answer_type": "closed" if closed else "open"}))
    return items
