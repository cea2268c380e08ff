"""`unimedvl data build`: sources -> QC -> sharded Parquet corpus, resumable and parallel.

Phases (all outputs written atomically; every phase is deterministic, so an interrupted build run
again produces the same manifest as an uninterrupted one):

A. chunks (parallel, resumable): each source's references are cut into fixed chunks; a worker loads
   the records, builds the samples, runs stage-1 checks and stage-2 scores, and writes
   `work/chunks/<source>/<n>.parquet` and its summary. Finished chunks are reused on a re-run.
B. global QC (small metadata only): exact and near duplicates, patient-level splits, split leakage,
   stage-2 thresholds per modality.
C. shards: accepted samples streamed into `data/<split>/shard-<n>.parquet` (bounded rows per shard),
   then `manifest.json`, the QC reports and the dataset card.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import pyarrow.parquet as pq

from unimedvl.data.manifest import Manifest, ShardInfo
from unimedvl.data.qc.alignment import build_scorers
from unimedvl.data.qc.coarse import CoarseLimits, check_sample
from unimedvl.data.qc.global_checks import GlobalQC
from unimedvl.data.schema import SCHEMA_VERSION
from unimedvl.data.sources.base import RecordError, SourceConfig, build_adapter
from unimedvl.data.storage import ShardWriter, candidate_schema, write_parquet_atomic
from unimedvl.data.tasks import BuildContext, build_samples
from unimedvl.errors import ConfigError
from unimedvl.utils.files import atomic_write_text, read_yaml_mapping
from unimedvl.utils.numbers import is_finite_number

DEFAULT_SPLITS = {"train": 0.8, "val": 0.1, "test": 0.1}


@dataclass(frozen=True)
class BuildConfig:
    """A build, as its YAML file states it (frozen; what a run finds out is returned, not stored here)."""

    name: str
    sources: tuple[SourceConfig, ...]
    splits: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SPLITS))
    seed: int = 0
    deid_salt: str | None = None
    chunk_size: int = 256
    shard_rows: int = 2000
    workers: int = 0  # 0 = all cores
    executor: str = "local"  # local | ray
    stage1: CoarseLimits = field(default_factory=CoarseLimits)
    stage2: dict[str, Any] = field(default_factory=dict)
    stage3: dict[str, Any] = field(default_factory=dict)
    config_sha256: str = ""

    @classmethod
    def from_yaml(cls, path: str | Path) -> "BuildConfig":
        path = Path(path)
        data = read_yaml_mapping(path, "build config")
        known = {"name", "sources", "splits", "seed", "deid_salt", "chunk_size", "shard_rows", "workers", "executor", "qc"}
        unknown = sorted(map(str, set(data) - known))
        if unknown:
            raise ConfigError(f"{path.name}: unknown key(s) {', '.join(unknown)}")
        if not data.get("sources"):
            raise ConfigError(f"{path.name}: no sources listed")
        if not isinstance(data["sources"], list):
            raise ConfigError(f"{path.name}: sources must be a list of source files or inline sources, "
                              f"got {type(data['sources']).__name__}")
        for key, low in (("chunk_size", 1), ("shard_rows", 1), ("workers", 0), ("seed", 0)):
            value = data.get(key)
            if value is not None and (not is_finite_number(value, integer=True) or value < low):
                raise ConfigError(f"{path.name}: {key} must be an integer >= {low}, got {value!r}")
        splits_given = data.get("splits")
        if splits_given is not None and (not isinstance(splits_given, dict) or not all(
                is_finite_number(v) and 0 <= v <= 1 for v in splits_given.values())):
            raise ConfigError(f"{path.name}: splits must map train / val / test to fractions, got {splits_given!r}")
        sources = []
        for entry in data["sources"]:
            if not isinstance(entry, (str, dict)):
                raise ConfigError(f"{path.name}: each source is a file name or a mapping, got {entry!r}")
            if isinstance(entry, str):
                sources.append(SourceConfig.from_yaml((path.parent / entry).resolve()))
            else:
                sources.append(SourceConfig.from_dict(entry, path.parent, f"{path.name} (inline source)"))
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ConfigError(f"{path.name}: source names must be unique, got {names}")
        qc = data.get("qc") or {}
        splits = data.get("splits") or dict(DEFAULT_SPLITS)
        if abs(sum(splits.values()) - 1.0) > 1e-6 or not set(splits) <= {"train", "val", "test"}:
            raise ConfigError(f"{path.name}: splits must be train/val/test fractions summing to 1")
        try:
            limits = CoarseLimits(**(qc.get("stage1") or {}))
        except TypeError as exc:
            raise ConfigError(f"{path.name}: qc.stage1: {exc}") from None
        executor = data.get("executor", "local")
        if executor not in ("local", "ray"):
            raise ConfigError(f"{path.name}: executor must be 'local' or 'ray'")
        return cls(name=str(data.get("name", path.stem)), sources=tuple(sources), splits=splits, seed=int(data.get("seed", 0)),
                   deid_salt=data.get("deid_salt"), chunk_size=int(data.get("chunk_size", 256)),
                   shard_rows=int(data.get("shard_rows", 2000)), workers=int(data.get("workers", 0)),
                   executor=executor, stage1=limits, stage2=dict(qc.get("stage2") or {}),
                   stage3=dict(qc.get("stage3") or {}),
                   config_sha256=hashlib.sha256(path.read_bytes()).hexdigest())


# ------------------------------------------------------------------ phase A
@dataclass(frozen=True)
class ChunkJob:
    source: SourceConfig
    index: int
    refs: list[Any]
    limits: CoarseLimits
    stage2: dict[str, Any]
    label_set: tuple[str, ...]
    work_dir: str

    @property
    def path(self) -> Path:
        return Path(self.work_dir) / "chunks" / self.source.name / f"{self.index:05d}.parquet"


def _describe(ref: Any) -> str:
    text = ref if isinstance(ref, str) else json.dumps(ref, default=str)
    return text if len(text) < 120 else text[:117] + "..."


def process_chunk(job: ChunkJob) -> dict[str, Any]:
    """Load, build, check and score one chunk; write its candidate shard. Returns the chunk summary."""
    start = time.perf_counter()
    adapter = build_adapter(job.source)
    scorers = build_scorers(job.stage2, Path(job.work_dir))
    rows: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    records = 0
    for ref in job.refs:
        try:
            loaded = adapter.load(ref)
        except RecordError as exc:
            # DICOM/NIfTI refs may carry identifiers in paths: the adapters' messages are pseudonymised.
            where = "entry" if job.source.adapter in ("dicom", "nifti") else _describe(ref)
            errors.append({"source": job.source.name, "ref": where, "error": str(exc)})
            continue
        for record in loaded if isinstance(loaded, list) else [loaded]:
            if isinstance(record, RecordError):  # a partial failure inside one reference (e.g. one bad slice)
                errors.append({"source": job.source.name, "ref": "entry", "error": str(record)})
                continue
            records += 1
            for repeat in range(job.source.repeat):
                ctx = BuildContext(tasks=job.source.tasks, label_set=job.label_set, repeat_index=repeat,
                                   options=job.source.options)
                for sample in build_samples(record, ctx):
                    reasons, metrics = check_sample(sample, job.limits)
                    metrics["text_sha"] = hashlib.sha256("\x1f".join(sample.texts()).encode()).hexdigest()[:16]
                    metrics["official_split"] = record.official_split
                    metrics["scores"] = {s.name: round(s.score(sample, metrics), 6) for s in scorers} if not reasons else {}
                    row = sample.to_row()
                    row["qc_reasons"] = reasons
                    row["qc_metrics"] = json.dumps(metrics, sort_keys=True)
                    rows.append(row)
    write_parquet_atomic(job.path, rows, candidate_schema())
    summary = {"source": job.source.name, "chunk": job.index, "refs": len(job.refs), "records": records,
               "samples": len(rows), "errors": errors, "seconds": round(time.perf_counter() - start, 3)}
    atomic_write_text(job.path.with_suffix(".json"), json.dumps(summary, sort_keys=True))
    return summary


def _label_set(source: SourceConfig, refs: list[Any]) -> tuple[str, ...]:
    if source.options.get("labels"):
        return tuple(sorted(str(v) for v in source.options["labels"]))
    names = source.options.get("label_names")
    if names:
        return tuple(sorted(str(v) for v in names.values()))
    if source.adapter == "class_folder":
        from unimedvl.data.sources.folders import _label_name

        return tuple(sorted({_label_name(str(r).split("/")[0], source.options) for r in refs}))
    return ()


def plan_chunks(config: BuildConfig, work_dir: Path, log: Callable[[str], None], *, salt: str = ""
                ) -> tuple[list[ChunkJob], list[dict[str, str]]]:
    """The chunk jobs of every readable source, and one error record per source that cannot be read.

    `salt` keys the pseudonyms of DICOM / NIfTI identifiers (see `build_corpus`).
    """
    jobs, errors = [], []
    for source in config.sources:
        if source.adapter in ("dicom", "nifti"):
            source = replace(source, options={**source.options, "deid_salt": salt})
        try:
            if not source.path.exists():
                # DICOM / NIfTI folders are often named after patients: their paths never reach a report or log.
                where = ("(path withheld: DICOM / NIfTI paths may hold identifiers)"
                         if source.adapter in ("dicom", "nifti") else str(source.path))
                raise RecordError(f"source folder or file not found: {where}")
            refs = build_adapter(source).refs()
            if source.limit is not None:
                refs = refs[: source.limit]
        except RecordError as exc:  # a malformed annotation file stops this source only
            errors.append({"source": source.name, "ref": "(source)", "error": str(exc)})
            log(f"source {source.name}: {exc}")
            continue
        labels = _label_set(source, refs)
        for index in range(math.ceil(len(refs) / config.chunk_size)):
            chunk = refs[index * config.chunk_size:(index + 1) * config.chunk_size]
            jobs.append(ChunkJob(source, index, chunk, config.stage1, config.stage2, labels, str(work_dir)))
    return jobs, errors


def run_chunks(jobs: list[ChunkJob], workers: int, executor: str, log: Callable[[str], None]) -> list[dict[str, Any]]:
    done = {}
    pending = []
    for job in jobs:
        summary_path = job.path.with_suffix(".json")
        if job.path.is_file() and summary_path.is_file():
            done[(job.source.name, job.index)] = json.loads(summary_path.read_text())
        else:
            pending.append(job)
    log(f"chunks: {len(jobs)} planned, {len(done)} reused, {len(pending)} to build")
    start, built = time.perf_counter(), 0
    if executor == "ray" and pending:
        from unimedvl.data.ray_runner import run_with_ray

        for summary in run_with_ray(pending, workers):
            done[(summary["source"], summary["chunk"])] = summary
    elif workers == 1 or len(pending) <= 1:
        for job in pending:
            summary = process_chunk(job)
            done[(job.source.name, job.index)] = summary
            built += summary["samples"]
            log(f"  chunk {job.source.name}/{job.index}: {summary['samples']} samples "
                f"({built / max(time.perf_counter() - start, 1e-9):.0f} samples/s)")
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(process_chunk, job): job for job in pending}
            for n, future in enumerate(as_completed(futures), start=1):
                summary = future.result()
                done[(summary["source"], summary["chunk"])] = summary
                built += summary["samples"]
                log(f"  chunk {n}/{len(pending)} ({summary['source']}/{summary['chunk']}): "
                    f"{built / max(time.perf_counter() - start, 1e-9):.0f} samples/s")
    return [done[(job.source.name, job.index)] for job in jobs]


# ------------------------------------------------------------------ phase B
def _assign_split(group: str, official: str | None, splits: dict[str, float], seed: int) -> str:
    if official in ("train", "val", "test"):
        return official
    fraction = int(hashlib.sha256(f"{seed}\x1f{group}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    edge = 0.0
    for name in ("train", "val", "test"):
        edge += splits.get(name, 0.0)
        if fraction < edge:
            return name
    return "train"


def global_qc(jobs: list[ChunkJob], config: BuildConfig, work_dir: Path) -> tuple[GlobalQC, dict[str, Any]]:
    """Splits, duplicates, leakage and stage-2 thresholds, decided on disk (see qc/global_checks.py)."""
    qc = GlobalQC(work_dir / "qc_global.sqlite")
    qc.load((job.path for job in jobs), lambda group, official: _assign_split(group, official, config.splits, config.seed),
            config.stage1.near_duplicate_bits)
    qc.exact_duplicates()
    qc.leakage()
    near = qc.near_duplicates(config.stage1.near_duplicate_bits)
    thresholds = config.stage2.get("thresholds", {})
    default = float(thresholds.get("default", 0.5))
    scores = qc.stage2(thresholds, default)
    counts = qc.counts()
    stats = {
        "candidates": counts["candidates"], "stage1_rejected": counts["stage1"],
        "duplicates_and_leakage": counts["global"], "stage2_rejected": counts["stage2"], "stage2_scores": scores,
        "stage2_thresholds": {"default": default, **{k: float(v) for k, v in thresholds.items() if k != "default"}},
        "near_duplicate_pairs": dict(near),
    }
    return qc, stats


# ------------------------------------------------------------------ phase C
def write_shards(jobs: list[ChunkJob], out: Path, qc: GlobalQC, shard_rows: int
                 ) -> tuple[tuple[ShardInfo, ...], dict[str, Any]]:
    """Stream the accepted candidates into split shards; returns the shards, counts and image sizes seen.

    The shards are written into `work/next/` first and swapped in only once all are written: a build
    killed (or out of disk) here leaves the previous corpus, manifest and shards, exactly as it was.
    The old manifest goes before the swap, so no moment has a manifest naming shards that are not there.
    """
    staging = out / "work" / "next"
    if staging.exists():
        shutil.rmtree(staging)  # a previous attempt that did not finish
    writer = ShardWriter(staging, shard_rows)
    image_sizes: list[tuple[str, int, int]] = []
    for job in jobs:
        parquet = pq.ParquetFile(job.path)
        for batch in parquet.iter_batches(batch_size=256):
            rows = batch.to_pylist()
            decided = qc.decisions([r["id"] for r in rows])
            for row in rows:
                split, rejected = decided[row["id"]]
                if rejected:
                    continue
                metrics = json.loads(row.pop("qc_metrics"))
                row.pop("qc_reasons")
                row["split"] = split
                row["qc"] = json.dumps({"scores": metrics.get("scores", {}), "dhash": metrics.get("dhash")}, sort_keys=True)
                first = next((it for it in row["items"] if it["image"] is not None), None)
                if first is not None and len(image_sizes) < 20000:
                    image_sizes.append((row["modality"], first["image_width"], first["image_height"]))
                writer.add(row)
    shards = writer.close()
    _swap_in(staging / "data", out)
    return shards, {"counts": writer.sorted_counts(), "image_sizes": image_sizes}


def _swap_in(new_data: Path, out: Path) -> None:
    """Replace `out/data` with `new_data`: the manifest describing the old shards is removed first."""
    (out / "manifest.json").unlink(missing_ok=True)
    new_data.mkdir(parents=True, exist_ok=True)  # a corpus may have no accepted sample at all
    retired = out / "work" / "retired-data"
    if retired.exists():
        shutil.rmtree(retired)
    if (out / "data").exists():
        os.replace(out / "data", retired)
    os.replace(new_data, out / "data")
    if retired.exists():
        shutil.rmtree(retired)


# ------------------------------------------------------------------ driver
def secrets_dir() -> Path:
    """Where the per-user de-identification salt lives: `$UNIMEDVL_SECRETS_DIR`, else ~/.config/unimedvl."""
    return Path(os.environ.get("UNIMEDVL_SECRETS_DIR") or Path.home() / ".config" / "unimedvl")


def _salt(config: BuildConfig, work: Path) -> str:
    """The key of the DICOM / NIfTI pseudonyms. Never stored in the corpus folder (with it, MRN-style IDs could
    be recovered by hashing guesses): the config's `deid_salt`, or a secret made once per user, kept in
    `secrets_dir()` with owner-only permissions."""
    if config.deid_salt:
        return str(config.deid_salt)
    legacy = work / "deid_salt"  # written by earlier versions inside the corpus: moved out, then removed
    path = secrets_dir() / "deid_salt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        value = legacy.read_text().strip() if legacy.is_file() else secrets.token_hex(16)
        atomic_write_text(path, value)
        os.chmod(path, 0o600)
    salt = path.read_text().strip()
    if legacy.is_file():
        if legacy.read_text().strip() != salt:
            raise ConfigError(f"{work} holds the pseudonym salt of an earlier version, different from yours in "
                              f"{path}: set `deid_salt` in the build config to that value to resume this corpus")
        legacy.unlink()
    return salt


def build_corpus(config: BuildConfig, out: str | Path, *, workers: int | None = None,
                 log: Callable[[str], None] | None = None) -> Manifest:
    """Build (or resume) a corpus in `out`. Returns its manifest (written last, after the shards)."""
    from unimedvl.data.card import write_card, write_qc_reports
    from unimedvl.data.qc.review import export_review_sample

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out = Path(out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    jobs, source_errors = plan_chunks(config, work, log, salt=_salt(config, work))
    n_workers = workers or config.workers or os.cpu_count() or 1
    summaries = run_chunks(jobs, n_workers, config.executor, log)
    qc, stats = global_qc(jobs, config, work)
    try:
        shards, written = write_shards(jobs, out, qc, config.shard_rows)
    finally:
        qc.close()
    errors = source_errors + [e for s in summaries for e in s["errors"]]
    per_source = {}
    for source in config.sources:
        mine = [s for s in summaries if s["source"] == source.name]
        per_source[source.name] = {
            "adapter": source.adapter, "licence": source.licence, "redistributable": source.redistributable,
            "tasks": list(source.tasks), "refs": sum(s["refs"] for s in mine), "records": sum(s["records"] for s in mine),
            "candidates": sum(s["samples"] for s in mine),
            "errors": sum(1 for e in errors if e["source"] == source.name),
        }
    manifest = Manifest(
        schema=SCHEMA_VERSION, name=config.name, total=sum(s.rows for s in shards), counts=written["counts"],
        shards=shards, origin={
            "config_sha256": config.config_sha256, "sources": per_source,
            "qc": {"candidates": stats["candidates"], "input_errors": len(errors),
                   "stage1_rejected": dict(sorted(stats["stage1_rejected"].items())),
                   "duplicates_and_leakage": dict(sorted(stats["duplicates_and_leakage"].items())),
                   "stage2_rejected": dict(sorted(stats["stage2_rejected"].items()))}})
    write_qc_reports(out, config, stats, errors, per_source)
    export_review_sample(out, int(config.stage3.get("per_stratum", 5)), seed=config.seed)
    write_card(out, manifest, written["image_sizes"], stats, config)
    manifest.write(out)
    log(f"built {manifest.total} samples in {len(shards)} shards -> {out}")
    return manifest
