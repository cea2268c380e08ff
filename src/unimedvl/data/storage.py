"""Sharded Parquet storage: atomic shard writes, checksums, readers."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

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
