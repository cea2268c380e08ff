"""What a benchmark is: items in one shape, read from the release's own files with clear errors.

Each benchmark module reads one official release format into :class:`EvalItem` s; the runner,
the scorers and the checks only ever see items. A malformed or partial download raises
:class:`BenchmarkDataError` naming the file and the field.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from unimedvl.errors import InputError

Kind = Literal["closed", "open", "choice", "report"]


class BenchmarkDataError(InputError):
    """A benchmark's files are missing, partial or not in the release format."""


@dataclass(frozen=True)
class EvalItem:
    """One question (or report request) about one image.

    `answer` is the reference answer as text; for multiple choice `options` holds (letter, text)
    pairs and `answer` is the correct letter. `groups` are the benchmark's own breakdown fields
    (answer_type, modality, category, ...), reported per value. A yes / no item may carry its own
    `paraphrases` and `flipped` (the question with its polarity reversed) for the phrasing check.
    """

    id: str
    question: str
    answer: str
    kind: Kind
    image: Path | bytes
    options: tuple[tuple[str, str], ...] = ()
    groups: dict[str, str] = field(default_factory=dict)
    paraphrases: tuple[str, ...] = ()
    flipped: str | None = None

    def image_bytes(self) -> bytes:
        if isinstance(self.image, bytes):
            return self.image
        try:
            return self.image.read_bytes()
        except OSError as exc:
            raise BenchmarkDataError(f"item {self.id}: cannot read image {self.image} ({exc.strerror})") from None


@dataclass(frozen=True)
class Benchmark:
    """A benchmark: how to read it, what it is called, what the papers report on it."""

    name: str
    title: str
    load: Callable[[Path], list[EvalItem]]
    layout: str  # what the data folder must hold, for errors and docs
    reference: dict[str, float] = field(default_factory=dict)  # published accuracy (%), model -> value
    reference_source: str = ""
    bundled: Path | None = None  # a copy shipped with the package (our own held-out sets)


# ------------------------------------------------------------------ readers
def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise BenchmarkDataError(f"{what}: {path} not found")
    return path


def read_json_list(path: Path, what: str) -> list[dict[str, Any]]:
    require_file(path, what)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BenchmarkDataError(f"{path.name}: not valid JSON ({exc}); is the download complete?") from None
    if not isinstance(data, list):
        raise BenchmarkDataError(f"{path.name}: expected a JSON list of items, got {type(data).__name__}")
    for number, entry in enumerate(data, start=1):
        if not isinstance(entry, dict):
            raise BenchmarkDataError(f"{path.name}: item {number} is not a JSON object")
    return data


def read_jsonl(path: Path, what: str) -> list[dict[str, Any]]:
    require_file(path, what)
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BenchmarkDataError(f"{path.name}: line {number} is not valid JSON ({exc.msg})") from None
        if not isinstance(entry, dict):
            raise BenchmarkDataError(f"{path.name}: line {number} is not a JSON object")
        rows.append(entry)
    return rows


def read_tsv(path: Path, what: str) -> list[dict[str, str]]:
    require_file(path, what)
    csv.field_size_limit(sys.maxsize)  # VLMEvalKit TSVs hold whole base64 images in one field
    with path.open(newline="", encoding="utf-8") as handle:
        try:
            return list(csv.DictReader(handle, delimiter="\t"))
        except csv.Error as exc:
            raise BenchmarkDataError(f"{path.name}: malformed TSV ({exc})") from None


def read_parquet(path: Path, what: str) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    require_file(path, what)
    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise BenchmarkDataError(f"{path.name}: not a readable parquet file ({exc}); is the download complete?") from None


def field_of(entry: dict[str, Any], name: str, where: str) -> Any:
    """A required field: missing or empty ones are named with their file and item."""
    value = entry.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise BenchmarkDataError(f"{where}: missing field {name!r}")
    return value


def decode_base64(value: str, where: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BenchmarkDataError(f"{where}: field 'image' is not valid base64") from None


def image_file(root: Path, relative: str, where: str) -> Path:
    path = root / relative
    if not path.is_file():
        raise BenchmarkDataError(f"{where}: image {relative!r} not found under {root}")
    return path


def data_checksum(items: list[EvalItem]) -> str:
    """SHA-256 over every item's id, question, answer, options and image bytes (what the scores depend on)."""
    digest = hashlib.sha256()
    for item in items:
        digest.update("\x1f".join([item.id, item.question, item.answer, repr(item.options)]).encode())
        digest.update(hashlib.sha256(item.image_bytes()).digest())
    return digest.hexdigest()
