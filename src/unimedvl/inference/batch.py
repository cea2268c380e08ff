"""Many questions, one loaded model: JSONL lines `{"image": path | [paths], "question": text}` -> answer records.

Every line is answered on its own: a bad line (invalid UTF-8 or JSON, a lone surrogate, a number too long
to parse, nesting too deep, a wrong type, an unreadable image, a line over `MAX_LINE_BYTES`) gets an error
record and the batch goes on. :func:`answer_file` streams: each record is appended to the output as soon as
it is computed (flushed), in input order, and a rerun after a kill skips the lines already answered (a torn
last record is dropped and redone).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterator

from unimedvl.errors import InputError, UnimedvlError
from unimedvl.inference.engine import TextOptions, UniMedVL

MAX_LINE_BYTES = 1_000_000


def _checked_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InputError(f'"{what}" must be a string, got {type(value).__name__}')
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f'"{what}" holds a lone surrogate escape (e.g. "\\ud800"), which is not text') from None
    return value


def parse_line(raw: bytes, base_dir: Path) -> tuple[dict[str, object], list[str], str]:
    """(record fields to echo, image paths, question) of one batch line, or an InputError naming the problem."""
    if len(raw) > MAX_LINE_BYTES:
        raise InputError(f"the line has {len(raw):,} bytes; at most {MAX_LINE_BYTES:,} are accepted")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"the line is not valid UTF-8 (byte {exc.start})") from None
    try:
        item = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON: {exc.msg}") from None
    except RecursionError:
        raise InputError("invalid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise InputError(f"invalid JSON: {exc}") from None
    if not isinstance(item, dict) or "question" not in item:
        raise InputError('each line must be a JSON object with "question" (and "image")')
    echo: dict[str, object] = {}
    if "id" in item:
        if isinstance(item["id"], (dict, list)):
            raise InputError('"id" must be a string or a number')
        echo["id"] = _checked_text(item["id"], "id") if isinstance(item["id"], str) else item["id"]
    question = _checked_text(item["question"], "question")
    paths = item.get("image", [])
    paths = [paths] if isinstance(paths, str) else paths
    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        raise InputError('"image" must be a path or a list of paths (non-empty strings)')
    paths = [_checked_text(p, "image") for p in paths]
    return echo, [str(base_dir / p) if not Path(p).is_absolute() else p for p in paths], question


def answer_lines(model: UniMedVL, lines: list[bytes], *, base_dir: Path, options: TextOptions,
                 think: bool = False, seed: int | None = None, skip: set[int] | None = None
                 ) -> Iterator[dict[str, object]]:
    """One record per non-blank line, in order: `line`, the line's `id` if any, then `answer` or `error`.

    Relative image paths are read from `base_dir` (the batch file's folder); lines numbered in `skip`
    are not answered again.
    """
    for number, raw in enumerate(lines, start=1):
        if not raw.strip() or (skip and number in skip):
            continue
        record: dict[str, object] = {"line": number}
        try:
            echo, paths, question = parse_line(raw, base_dir)
            record.update(echo)
            record["answer"] = model.ask(paths, question, think=think, options=options, seed=seed).text
        except UnimedvlError as exc:
            record["error"] = str(exc)
        yield record


def answered_lines(out: Path) -> set[int]:
    """Line numbers already recorded in `out`; a torn last record (a kill mid-write) is cut off the file."""
    if not out.is_file():
        return set()
    data = out.read_bytes()
    keep = data if data.endswith(b"\n") or not data else data[: data.rfind(b"\n") + 1]
    done = set()
    for raw in keep.splitlines():
        try:
            done.add(int(json.loads(raw)["line"]))
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{out} holds a line that is not an answer record; choose another --out") from None
    if keep != data:
        with out.open("r+b") as handle:
            handle.truncate(len(keep))
    return done


def answer_file(model: UniMedVL, batch: Path, out: Path | None, *, options: TextOptions, think: bool = False,
                seed: int | None = None, write: Callable[[str], None] | None = None,
                progress: Callable[[int, int], None] | None = None) -> int:
    """Answer every line of `batch`, appending each record to `out` (or passing it to `write`) as it completes.

    Returns how many lines were answered in this run (lines already in `out` are skipped).
    """
    lines = batch.read_bytes().split(b"\n")
    skip = answered_lines(out) if out is not None else set()
    count = 0
    handle = out.open("a", encoding="utf-8") if out is not None else None
    try:
        for record in answer_lines(model, lines, base_dir=batch.parent, options=options, think=think, seed=seed,
                                   skip=skip):
            text = json.dumps(record, ensure_ascii=False) + "\n"
            if handle is not None:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            elif write is not None:
                write(text)
            count += 1
            if progress is not None:
                progress(int(record["line"]), len(lines))
    finally:
        if handle is not None:
            handle.close()
    return count
