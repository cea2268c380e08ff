"""`manifest.json`: what a corpus folder holds (shards with checksums, counts) and how it was made.

Every corpus writer (`unimedvl data build`, `unimedvl data transform`) writes one through
:class:`Manifest`, last, atomically, after the shards it lists; every reader checks it first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unimedvl.errors import ConfigError

MANIFEST = "manifest.json"
COUNTED = ("modality", "task", "family", "split", "source")  # per-row fields every manifest counts


@dataclass(frozen=True)
class ShardInfo:
    path: str  # relative to the corpus folder: data/<split>/shard-<n>.parquet
    split: str
    rows: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """The corpus' contents. `origin` holds how it was made, flattened into the JSON: a build's
    `config_sha256`, `sources` and `qc` summaries, or a derivation's `derived_from`, `teacher`, ...."""

    schema: str
    name: str
    total: int
    counts: dict[str, dict[str, int]]
    shards: tuple[ShardInfo, ...]
    origin: dict[str, Any] = field(default_factory=dict)

    _FIELDS = ("schema", "name", "total", "counts", "shards")

    def __post_init__(self) -> None:
        if self.total != sum(s.rows for s in self.shards):
            raise ConfigError(f"manifest of {self.name!r}: total {self.total} is not the sum of its shards' rows")
        clash = set(self.origin) & set(self._FIELDS)
        if clash:
            raise ConfigError(f"manifest origin may not redefine {sorted(clash)}")

    def to_json_dict(self) -> dict[str, Any]:
        return {**self.origin, "schema": self.schema, "name": self.name, "total": self.total, "counts": self.counts,
                "shards": [vars(s) for s in self.shards]}

    @classmethod
    def from_json_dict(cls, data: dict[str, Any], source: str = MANIFEST) -> "Manifest":
        missing = [k for k in cls._FIELDS if k not in data]
        if missing:
            raise ConfigError(f"{source} lacks {', '.join(missing)}")
        try:
            shards = tuple(ShardInfo(path=s["path"], split=s["split"], rows=int(s["rows"]), sha256=s["sha256"])
                           for s in data["shards"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: malformed shard entry ({exc})") from None
        origin = {k: v for k, v in data.items() if k not in cls._FIELDS}
        return cls(schema=data["schema"], name=data["name"], total=int(data["total"]), counts=data["counts"],
                   shards=shards, origin=origin)

    @classmethod
    def read(cls, folder: str | Path) -> "Manifest":
        from unimedvl.utils.files import read_json_object

        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise ConfigError(f"{folder} is not a built corpus (no {MANIFEST}); run `unimedvl data build` first")
        return cls.from_json_dict(read_json_object(path, "corpus manifest"), str(path))

    def write(self, folder: str | Path) -> None:
        from unimedvl.utils.files import atomic_write_text

        atomic_write_text(Path(folder) / MANIFEST, json.dumps(self.to_json_dict(), indent=2, sort_keys=True) + "\n")
