"""Our own evaluation sets (`items.jsonl` + images, one folder per set): the bundled held-out sets in
`assets/eval_sets/`, and any set a user writes in the same layout.

Each line: `id`, `question`, `answer`, `kind` (closed / open / choice / report), `image` (a path
relative to the folder), optional `options` ([[letter, text], ...]), `groups` ({field: value}),
`paraphrases` ([question, ...]) and `flipped` (the polarity-reversed question) for yes / no items.
"""

from __future__ import annotations

from pathlib import Path

from unimedvl.eval.benchmarks.base import BenchmarkDataError, EvalItem, field_of, image_file, read_jsonl

KINDS = ("closed", "open", "choice", "report")


def load(root: Path) -> list[EvalItem]:
    items = []
    for number, entry in enumerate(read_jsonl(root / "items.jsonl", "evaluation set"), start=1):
        where = f"items.jsonl: line {number}"
        kind = field_of(entry, "kind", where)
        if kind not in KINDS:
            raise BenchmarkDataError(f"{where}: field 'kind' must be one of {list(KINDS)}, got {kind!r}")
        options = tuple((str(a), str(b)) for a, b in entry.get("options") or ())
        groups = entry.get("groups") or {}
        if not isinstance(groups, dict):
            raise BenchmarkDataError(f"{where}: field 'groups' must be an object")
        items.append(EvalItem(id=str(field_of(entry, "id", where)), question=str(field_of(entry, "question", where)),
                              answer=str(field_of(entry, "answer", where)), kind=kind,
                              image=image_file(root, str(field_of(entry, "image", where)), where), options=options,
                              groups={str(k): str(v) for k, v in groups.items()},
                              paraphrases=tuple(str(p) for p in entry.get("paraphrases") or ()),
                              flipped=entry.get("flipped")))
    return items
