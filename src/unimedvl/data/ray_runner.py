"""Run the chunk phase on a Ray cluster (or a local Ray instance) through Ray Data.

The same `process_chunk` function runs on every node; chunks write into the shared output folder,
which must therefore be on storage that all nodes see. Start Ray yourself (`ray start --head`, then
`ray start --address=...` on the workers) and set RAY_ADDRESS, or let this start a local instance.
"""

from __future__ import annotations

import json
from typing import Any


def run_with_ray(jobs: list, workers: int) -> list[dict[str, Any]]:
    try:
        import ray
        import ray.data
    except ImportError:
        from unimedvl.errors import ConfigError

        raise ConfigError("executor 'ray' needs Ray: pip install 'ray[data]'") from None
    from unimedvl.data.pipeline import process_chunk

    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=workers or None, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        started = True
    try:
        def run(row: dict[str, Any]) -> dict[str, Any]:
            return {"summary": json.dumps(process_chunk(jobs[row["index"]]))}

        items = [{"index": i} for i in range(len(jobs))]
        dataset = ray.data.from_items(items, override_num_blocks=max(1, len(items))).map(run)
        return [json.loads(r["summary"]) for r in dataset.take_all()]
    finally:
        if started:
            ray.shutdown()
