"""The Ray Serve deployment (issue 15, item 6): two replicas of the same app behind Ray's proxy, on this CPU."""

from __future__ import annotations

import socket

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_replicas_answer_through_rays_proxy() -> None:
    import ray  # ray[serve] is in the test extra
    from ray import serve

    from unimedvl.serve.ray_app import application

    port = _free_port()
    if ray.is_initialized():  # another test's local Ray (the corpus and eval runners) may still be up
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(application(num_replicas=2, ray_actor_options={"num_cpus": 0.5}, max_new_tokens=16),
                  name="unimedvl", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/health", timeout=30).json() == {"status": "ok"}
        answers = set()
        for _ in range(6):
            reply = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
                "messages": [{"role": "user", "content": "What imaging modality is this?"}], "max_tokens": 8})
            assert reply.status_code == 200, reply.text
            answers.add(reply.json()["choices"][0]["message"]["content"])
        assert len(answers) == 1  # greedy: every replica answers the same
        limited = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 17})
        assert limited.status_code == 400 and "max_tokens must be in [1, 16]" in limited.json()["error"]["message"]
        status = serve.status().applications["unimedvl"].deployments["unimedvl"]
        assert status.replica_states.get("RUNNING") == 2
    finally:
        serve.shutdown()
        ray.shutdown()
