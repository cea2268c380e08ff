"""Throughput and memory of the corpus build, stages 1-2 (the chunk phase), at 10 k and 100 k samples.

    .venv/bin/python bench/bench_data.py [--workers 2]

The bundled PneumoniaMNIST set is repeated (`repeat` in the source config) to reach each size; every
record gives 5 samples (3 VQA, caption, text-to-image). Each size runs in a fresh process; peak
memory is the high-water RSS of the driver and of the largest worker. Peer in the same run: the
same images decoded and hashed by a bare PIL + hashlib loop (the floor any pipeline pays), as a ratio.
Prints a Markdown table; it is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from unimedvl.assets import SAMPLE_CORPUS_CONFIG

NPZ = SAMPLE_CORPUS_CONFIG.parent / "medmnist" / "pneumoniamnist_no_test.npz"

PROBE = """
import json, resource, sys, time
from unimedvl.data.pipeline import BuildConfig, plan_chunks, run_chunks, global_qc
config = BuildConfig.from_yaml(sys.argv[1])
work = __import__("pathlib").Path(sys.argv[2])
jobs, _ = plan_chunks(config, work, lambda m: None, salt="bench")
start = time.perf_counter()
summaries = run_chunks(jobs, int(sys.argv[3]), "local", lambda m: None)
chunk_s = time.perf_counter() - start
samples = sum(s["samples"] for s in summaries)
start = time.perf_counter()
qc, _ = global_qc(jobs, config, work)
qc.close()
global_s = time.perf_counter() - start
print(json.dumps({"samples": samples, "chunk_s": chunk_s, "global_s": global_s,
                  "driver_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "worker_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def write_config(folder: Path, records: int, repeat: int) -> Path:
    config = {"name": "bench", "seed": 0, "deid_salt": "bench", "chunk_size": 100, "shard_rows": 5000,
              "sources": [{"name": "pneumonia", "adapter": "medmnist", "path": str(NPZ), "modality": "chest_xray",
                           "licence": "CC-BY-4.0", "limit": records, "repeat": repeat,
                           "tasks": ["vqa", "caption", "text_to_image"],
                           "options": {"label_names": {0: "no pneumonia", 1: "pneumonia"}}}]}
    path = folder / "build.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def peer_rate(n_images: int) -> float:
    """Images/s of a bare decode + sha256 + grey-statistics loop over the same PNG-encoded images."""
    arrays = np.load(NPZ)["train_images"][:n_images]
    blobs = []
    for a in arrays:
        buffer = io.BytesIO()
        Image.fromarray(a).save(buffer, format="PNG")
        blobs.append(buffer.getvalue())
    start = time.perf_counter()
    for blob in blobs:
        hashlib.sha256(blob).hexdigest()
        with Image.open(io.BytesIO(blob)) as img:
            np.asarray(img.convert("L"), dtype=np.float32).std()
    return len(blobs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    peer = peer_rate(2000)
    print(f"peer: bare PIL decode + sha256 + std, one core: {peer:,.0f} images/s\n")
    print("| samples | stage 1-2 samples/s | per worker vs peer | global QC s | peak RSS driver | peak RSS worker |")
    print("|---|---|---|---|---|---|")
    for records, repeat in ((400, 5), (4000, 5)):  # same chunk make-up, 10x the samples
        with tempfile.TemporaryDirectory() as tmp:
            config = write_config(Path(tmp), records, repeat)
            proc = subprocess.run([sys.executable, "-c", PROBE, str(config), str(Path(tmp) / "work"), str(args.workers)],
                                  capture_output=True, text=True, check=True)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
        rate = r["samples"] / r["chunk_s"]
        print(f"| {r['samples']:,} | {rate:,.0f} | {rate / args.workers / peer:.2f}x | {r['global_s']:.1f} | "
              f"{r['driver_kib'] / 1024:.0f} MiB | {r['worker_kib'] / 1024:.0f} MiB |")


if __name__ == "__main__":
    main()
