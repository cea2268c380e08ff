"""Many questions, one loaded model: JSONL lines `{"image": path | [paths], "question": text}` -> answer records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from unimedvl.errors import InputError, UnimedvlError
from unimedvl.inference.engine import TextOptions, UniMedVL


def answer_lines(model: UniMedVL, lines: list[str], *, base_dir: Path, options: TextOptions, think: bool = False,
                 seed: int | None = None) -> Iterator[dict[str, object]]:
    """One record per non-blank line, in order: `line`, the line's `id` if any, then `answer` or `error`.

    Relative image paths are read from `base_dir` (the batch file's folder). A bad line gets an
    error record and the batch goes on.
    """
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record: dict[str, object] = {"line": number}
        try:
            item = json.loads(line)
            if not isinstance(item, dict) or "question" not in item:
                raise InputError('each line must be a JSON object with "question" (and "image")')
            record.update({k: item[k] for k in ("id",) if k in item})
            paths = item.get("image", [])
            paths = [paths] if isinstance(paths, str) else paths
            if not isinstance(paths, list):
                raise InputError('"image" must be a path or a list of paths')
            paths = [str((base_dir / p) if not Path(p).is_absolute() else p) for p in paths]
            record["answer"] = model.ask(paths, item["question"], think=think, options=options, seed=seed).text
        except json.JSONDecodeError as exc:
            record["error"] = f"invalid JSON: {exc.msg}"
        except UnimedvlError as exc:
            record["error"] = str(exc)
        yield record
