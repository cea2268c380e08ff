"""Ray Serve deployment of the same app: one model per replica, Ray's proxy in front (multi-GPU, multi-node).

    # pip install 'unimedvl[ray-serve]'; then, in Python:
    from ray import serve
    from unimedvl.serve.ray_app import application
    serve.run(application("path/to/UniMedVL", num_replicas=2, ray_actor_options={"num_gpus": 1}))

Each replica loads the checkpoint and builds its own app with `create_app` (the app keeps no global
state, so replicas never share queues or metrics); Ray routes requests between them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unimedvl.serve.settings import ServerSettings


def build_app(checkpoint: str | None, load_options: dict[str, Any], settings: ServerSettings) -> Any:
    """Runs on the replica: load the model there, then build the app over it."""
    from unimedvl.assets import default_checkpoint
    from unimedvl.inference.engine import UniMedVL
    from unimedvl.serve.app import create_app

    model = UniMedVL.from_pretrained(Path(checkpoint) if checkpoint else default_checkpoint(), **load_options)
    return create_app(model, settings)


def application(checkpoint: str | None = None, *, num_replicas: int = 1, ray_actor_options: dict | None = None,
                load_options: dict[str, Any] | None = None, **settings: Any) -> Any:
    """A Ray Serve application whose replicas each serve `create_app` over their own loaded model."""
    from ray import serve

    server_settings = ServerSettings(**settings)
    options = dict(load_options or {})

    def builder() -> Any:
        return build_app(checkpoint, options, server_settings)

    deployment = serve.deployment(serve.ingress(builder)(), name="unimedvl", num_replicas=num_replicas,
                                  ray_actor_options=ray_actor_options or {})
    return deployment.bind()
