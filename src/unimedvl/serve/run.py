"""Run the app under uvicorn: one process, one loaded model (run several behind a balancer to scale out)."""

from __future__ import annotations

import logging

from unimedvl.inference.engine import UniMedVL
from unimedvl.serve.settings import ServerSettings, check_bind


def serve(model: UniMedVL, settings: ServerSettings, *, host: str = "127.0.0.1", port: int = 8000,
          allow_remote: bool = False, log_level: str = "info") -> None:
    import uvicorn

    from unimedvl.serve.app import create_app

    check_bind(host, settings.api_key, allow_remote)
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO), format="%(asctime)s %(message)s")
    # uvicorn's access log prints query strings; ours (route, status, time) replaces it.
    uvicorn.run(create_app(model, settings), host=host, port=port, log_level=log_level, access_log=False,
                timeout_graceful_shutdown=10)
