"""Answer a benchmark on a Ray cluster (or local Ray workers): one loaded model per actor, through Ray Data.

Start Ray yourself (`ray start --head` / `--address=...`) and set RAY_ADDRESS for a cluster, or let
this start a local instance with `workers` CPUs. The answers come back in request order, so a run
on Ray writes the same predictions and results as one process.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from unimedvl.errors import ConfigError
from unimedvl.eval.predictors import EnginePredictor, Request


@dataclass(frozen=True)
class EngineFactory:
    """What an actor needs to load its own copy of the model (picklable)."""

    checkpoint: str
    dtype: str | None = None
    device: str | None = None

    def __call__(self) -> EnginePredictor:
        from unimedvl.inference.engine import UniMedVL

        return EnginePredictor(UniMedVL.from_pretrained(self.checkpoint, dtype=self.dtype, device=self.device),
                               name=self.checkpoint)


class _Actor:
    def __init__(self, factory: EngineFactory) -> None:
        self.predictor = factory()

    def __call__(self, batch: dict) -> dict:
        requests = [Request(Image.open(io.BytesIO(png)).convert("RGB"), prompt, int(tokens))
                    for png, prompt, tokens in zip(batch["png"], batch["prompt"], batch["tokens"])]
        return {"index": batch["index"], "text": self.predictor.predict(requests)}


class RayPredictor:
    """A predictor whose batches are spread over `workers` Ray actors, each with the model loaded once."""

    def __init__(self, factory: EngineFactory, workers: int, name: str) -> None:
        if workers < 1:
            raise ConfigError(f"--ray needs at least one worker, got {workers}")
        self.factory, self.workers, self.name = factory, workers, name

    def predict(self, requests: list[Request]) -> list[str]:
        try:
            import ray
            import ray.data
        except ImportError:
            raise ConfigError("--ray needs Ray: pip install 'ray[data]'") from None
        if not ray.is_initialized():  # started once per process, for every batch and check of the run
            import atexit

            ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
            atexit.register(ray.shutdown)
        rows = []
        for index, r in enumerate(requests):
            buffer = io.BytesIO()
            r.image.save(buffer, format="PNG")
            rows.append({"index": index, "png": buffer.getvalue(), "prompt": r.prompt, "tokens": r.max_new_tokens})
        per_actor = max(1, -(-len(rows) // self.workers))
        dataset = ray.data.from_items(rows, override_num_blocks=min(len(rows), self.workers * 4) or 1)
        answered = dataset.map_batches(_Actor, fn_constructor_args=(self.factory,), concurrency=self.workers,
                                       batch_size=min(per_actor, 16), batch_format="numpy", num_cpus=1)
        texts: list[str] = [""] * len(rows)
        for row in answered.take_all():
            texts[int(row["index"])] = str(row["text"])
        return texts
