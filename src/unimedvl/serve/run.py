"""Run the app under uvicorn: one process, one loaded model (run several behind a balancer to scale out)."""

from __future__ import annotations

import logging
import os
import threading

from unimedvl.inference.engine import UniMedVL
from unimedvl.serve.settings import ServerSettings, check_bind


def compute_threads(requested: int | None) -> int:
    """Torch threads for the model: all cores but one by default, which stays free for reading images and
    HTTP (idle OpenMP threads spin and would take that core: on 2 cores this halved the batched throughput)."""
    if requested is not None:
        return max(1, requested)
    return max(1, (os.cpu_count() or 2) - 1)


def serve(model: UniMedVL, settings: ServerSettings, *, host: str = "127.0.0.1", port: int = 8000,
          allow_remote: bool = False, log_level: str = "info", threads: int | None = None) -> None:
    import torch
    import uvicorn

    from unimedvl.serve.app import create_app

    check_bind(host, settings.api_key, allow_remote)
    torch.set_num_threads(compute_threads(threads))
    if model.device.type == "cpu" and model.model.compute_dtype == torch.float32:
        # Long-context decoding's attention kernel is built (or loaded) beside startup, so the first long
        # request does not stall every running one for the build (model/decode_attention.py).
        from unimedvl.model.decode_attention import DECODE_ATTENTION

        threading.Thread(target=DECODE_ATTENTION.ensure_built, name="decode-attention-build", daemon=True).start()
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO), format="%(asctime)s %(message)s")
    # uvicorn's access log prints query strings; ours (route, status, time) replaces it.
    uvicorn.run(create_app(model, settings), host=host, port=port, log_level=log_level, access_log=False,
                timeout_graceful_shutdown=10)
