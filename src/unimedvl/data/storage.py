"""Sharded Parquet storage: one shard writer for every corpus writer, atomic writes, checksums, readers."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from unimedvl.data.manifest import COUNTED, ShardInfo
from unimedvl.data.schema import Sample, arrow_schema

CANDIDATE_EXTRA = [("qc_reasons", pa.list_(pa.string())), ("qc_metrics", pa.string())]


def candidate_schema() -> pa.Schema:
    schema = arrow_schema()
    for name, kind in CANDIDATE_EXTRA:
        schema = schema.append(pa.field(name, kind))
    return schema


def write_parquet_atomic(path: Path, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    """Write then rename, so a killed build never leaves a half-written shard under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=schema)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        # Images are already compressed: store them without re-compression, one row group per shard.
        pq.write_table(table, tmp, compression="zstd", use_dictionary=["task", "family", "modality", "source",
                                                                         "licence", "split", "schema"],
                       row_group_size=max(1, len(rows)), write_statistics=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ShardWriter:
    """Sample rows -> `data/<split>/shard-<n>.parquet`, at most `shard_rows` rows each.

    Rows of one split go to that split's shards in the order they are added; every shard is
    written atomically and checksummed, and the rows are counted per `COUNTED` field for the
    manifest. `close()` writes what is left and returns the shards, sorted by path.
    """

    def __init__(self, out: Path, shard_rows: int, schema: pa.Schema | None = None) -> None:
        if shard_rows < 1:
            raise ValueError(f"shard_rows must be at least 1, got {shard_rows}")
        self.out, self.shard_rows, self.schema = Path(out), shard_rows, schema or arrow_schema()
        self.counts: dict[str, Counter] = {k: Counter() for k in COUNTED}
        self._buffers: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._numbers: Counter = Counter()
        self._shards: list[ShardInfo] = []

    def add(self, row: dict[str, Any]) -> None:
        split = row["split"]
        self._buffers[split].append(row)
        for key in COUNTED:
            self.counts[key][row[key]] += 1
        if len(self._buffers[split]) >= self.shard_rows:
            self._flush(split)

    def _flush(self, split: str) -> None:
        rows = self._buffers.pop(split, [])
        if not rows:
            return
        path = self.out / "data" / split / f"shard-{self._numbers[split]:05d}.parquet"
        self._numbers[split] += 1
        write_parquet_atomic(path, rows, self.schema)
        self._shards.append(ShardInfo(str(path.relative_to(self.out)), split, len(rows), sha256_file(path)))

    def close(self) -> tuple[ShardInfo, ...]:
        for split in sorted(self._buffers):
            self._flush(split)
        return tuple(sorted(self._shards, key=lambda s: s.path))

    def sorted_counts(self) -> dict[str, dict[str, int]]:
        return {k: dict(sorted(v.items())) for k, v in self.counts.items()}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def iter_samples(corpus_dir: str | Path, split: str | None = None) -> Iterator[Sample]:
    """Stream the samples of a built corpus (one shard in memory at a time)."""
    root = Path(corpus_dir) / "data"
    splits = [split] if split else sorted(p.name for p in root.iterdir() if p.is_dir())
    for name in splits:
        for shard in sorted((root / name).glob("shard-*.parquet")):
            for batch in pq.ParquetFile(shard).iter_batches(batch_size=256):
                for row in batch.to_pylist():
                    yield Sample.from_row(row)
