"""Stage 1 (global part) and the stage-2 decision, on disk: memory stays flat as the corpus grows.

Per-sample metadata (id, task, group, image hashes, text hash, perceptual hash, scores) streams
from the candidate shards into SQLite (`work/qc_global.sqlite`); the checks are SQL over indexed
tables, so memory does not grow with the number of samples. Every step walks samples in id
order, so decisions are deterministic:

1. stage-1 rule failures (from the workers);
2. exact duplicates: same task, same images, same text -> keep the smallest id;
3. split leakage: a val/test sample whose image (sha256) is also in a kept train sample;
4. near duplicates: same task and text, different group, 256-bit dHash within N bits (banded
   candidate search) -> keep the first; across splits it counts as leakage;
5. stage 2: any scorer below the modality's threshold.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable

import pyarrow.parquet as pq

from unimedvl.data.qc.coarse import HASH_BITS, hamming

META_COLUMNS = ["id", "task", "modality", "source", "group", "qc_reasons", "qc_metrics"]
HIST_BINS = 20


def _bands(value: int, max_bits: int) -> list[int]:
    bands = max_bits + 1
    width = HASH_BITS // bands
    out = []
    for band in range(bands):
        shift = band * width
        mask_width = HASH_BITS - shift if band == bands - 1 else width
        out.append((value >> shift) & ((1 << mask_width) - 1))
    return out


class GlobalQC:
    def __init__(self, path: Path) -> None:
        path.unlink(missing_ok=True)  # rebuilt from the candidates on every run (cheap, deterministic)
        self.db = sqlite3.connect(path)
        self.db.executescript("""
            PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -65536;
            CREATE TABLE samples (id TEXT PRIMARY KEY, task TEXT, modality TEXT, grp TEXT, split TEXT,
                                  text_sha TEXT, dup_key TEXT, dhash TEXT, scores TEXT, stage1 TEXT, rejected TEXT);
            CREATE TABLE images (id TEXT, sha TEXT);
            CREATE TABLE bands (task TEXT, band INTEGER, value TEXT, id TEXT);
        """)

    def load(self, shards: Iterable[Path], assign_split: Callable[[str, str | None], str], max_bits: int) -> None:
        for shard in shards:
            for batch in pq.ParquetFile(shard).iter_batches(batch_size=2048, columns=META_COLUMNS):
                samples, images, bands = [], [], []
                for row in batch.to_pylist():
                    m = json.loads(row["qc_metrics"])
                    shas = [s[:16] for s in m["image_sha256"]]
                    dup_key = hashlib.sha256(f"{row['task']}|{','.join(shas)}|{m['text_sha']}".encode()).hexdigest()[:20]
                    dhash = m.get("dhash")
                    stage1 = json.dumps(row["qc_reasons"]) if row["qc_reasons"] else None
                    samples.append((row["id"], row["task"], row["modality"], row["group"],
                                    assign_split(row["group"], m.get("official_split")), m["text_sha"], dup_key,
                                    None if dhash is None else format(dhash, "x"), json.dumps(m.get("scores", {})),
                                    stage1, stage1))
                    images += [(row["id"], sha) for sha in shas]
                    if dhash is not None and not stage1:
                        bands += [(row["task"], b, format(v, "x"), row["id"]) for b, v in enumerate(_bands(dhash, max_bits))]
                self.db.executemany("INSERT INTO samples VALUES (?,?,?,?,?,?,?,?,?,?,?)", samples)
                self.db.executemany("INSERT INTO images VALUES (?,?)", images)
                self.db.executemany("INSERT INTO bands VALUES (?,?,?,?)", bands)
        self.db.executescript("""
            CREATE INDEX images_sha ON images (sha); CREATE INDEX images_id ON images (id);
            CREATE INDEX bands_key ON bands (task, band, value); CREATE INDEX samples_dup ON samples (dup_key);
        """)

    def _reject(self, ids: Iterable[str], reason: str) -> None:
        self.db.executemany("UPDATE samples SET rejected = ? WHERE id = ?", [(json.dumps([reason]), i) for i in ids])

    def exact_duplicates(self) -> None:
        self.db.execute("""
            UPDATE samples SET rejected = '["exact_duplicate"]'
            WHERE rejected IS NULL AND id NOT IN (SELECT MIN(id) FROM samples WHERE rejected IS NULL GROUP BY dup_key)""")

    def leakage(self) -> None:
        self.db.executescript("""
            DROP TABLE IF EXISTS train_sha;
            CREATE TEMP TABLE train_sha AS
                SELECT DISTINCT i.sha FROM images i JOIN samples s ON s.id = i.id
                WHERE s.split = 'train' AND s.rejected IS NULL;
            CREATE INDEX train_sha_idx ON train_sha (sha);
            UPDATE samples SET rejected = '["split_leakage"]'
            WHERE rejected IS NULL AND split != 'train'
              AND id IN (SELECT i.id FROM images i JOIN train_sha t ON t.sha = i.sha);
        """)

    def near_duplicates(self, max_bits: int, max_bucket: int = 5000) -> Counter:
        """Banded candidate search, one bucket in memory at a time; decisions applied in (id, id) order."""
        found: list[tuple[str, str, str]] = []  # (kept id, removed id, reason) before ordering
        cursor = self.db.execute("""
            SELECT b.task, b.band, b.value, s.id, s.grp, s.split, s.text_sha, s.dhash
            FROM bands b JOIN samples s ON s.id = b.id
            WHERE s.rejected IS NULL ORDER BY b.task, b.band, b.value, s.id""")
        bucket: list[tuple] = []
        key = None

        def flush() -> None:
            if not 2 <= len(bucket) <= max_bucket:  # pathological buckets (e.g. blank images) are skipped
                return
            for x in range(len(bucket)):
                ida, ga, sa, ta, ha, band = bucket[x]
                va = int(ha, 16)
                for y in range(x + 1, len(bucket)):
                    idb, gb, sb, tb, hb, _ = bucket[y]
                    if ga == gb or ta != tb:
                        continue
                    vb = int(hb, 16)
                    if hamming(va, vb) > max_bits:
                        continue
                    # Count each pair once: at the lowest band in which it collides.
                    if any(p == q for p, q in zip(_bands(va, max_bits)[:band], _bands(vb, max_bits)[:band])):
                        continue
                    found.append((ida, idb, "split_leakage" if sa != sb else "near_duplicate"))

        for task, band, value, sid, grp, split, text_sha, dhash in cursor:
            if (task, band, value) != key:
                flush()
                bucket, key = [], (task, band, value)
            bucket.append((sid, grp, split, text_sha, dhash, band))
        flush()
        removed: dict[str, str] = {}
        for a, b, reason in sorted(found):
            if a in removed or b in removed:
                continue
            removed[b] = reason
        for reason in ("split_leakage", "near_duplicate"):
            self._reject([i for i, r in removed.items() if r == reason], reason)
        return Counter(removed.values())

    def stage2(self, thresholds: dict[str, float], default: float) -> dict[str, dict[str, dict[str, Any]]]:
        stats: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        updates = []
        for sample_id, modality, scores in self.db.execute(
                "SELECT id, modality, scores FROM samples WHERE rejected IS NULL ORDER BY id"):
            limit = float(thresholds.get(modality, default))
            failed = []
            for name, value in json.loads(scores).items():
                if value is None or (isinstance(value, float) and math.isnan(value)):
                    continue
                s = stats[modality].setdefault(name, {"n": 0, "sum": 0.0, "min": 1.0, "hist": [0] * HIST_BINS})
                s["n"] += 1
                s["sum"] += value
                s["min"] = min(s["min"], value)
                s["hist"][min(HIST_BINS - 1, max(0, int(value * HIST_BINS)))] += 1
                if value < limit:
                    failed.append(f"alignment_below_threshold:{name}")
            if failed:
                updates.append((json.dumps(failed), sample_id))
        self.db.executemany("UPDATE samples SET rejected = ? WHERE id = ?", updates)
        for by_scorer in stats.values():
            for s in by_scorer.values():
                s["mean"] = round(s.pop("sum") / s["n"], 4)
                s["min"] = round(s["min"], 4)
        return dict(stats)

    def counts(self) -> dict[str, Counter]:
        out = {"candidates": self.db.execute("SELECT COUNT(*) FROM samples").fetchone()[0],
               "stage1": Counter(), "global": Counter(), "stage2": Counter()}
        for stage1, rejected in self.db.execute("SELECT stage1, rejected FROM samples WHERE rejected IS NOT NULL"):
            if stage1:
                out["stage1"].update(json.loads(stage1))
                continue
            reasons = json.loads(rejected)
            target = "stage2" if reasons[0].startswith("alignment") else "global"
            out[target].update(reasons)
        return out

    def decisions(self, ids: list[str]) -> dict[str, tuple[str, bool]]:
        out = {}
        for start in range(0, len(ids), 900):
            chunk = ids[start:start + 900]
            for sample_id, split, rejected in self.db.execute(
                    f"SELECT id, split, rejected FROM samples WHERE id IN ({','.join('?' * len(chunk))})", chunk):
                out[sample_id] = (split, rejected is not None)
        return out

    def close(self) -> None:
        self.db.close()
