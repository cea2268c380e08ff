"""The run's AdamW: the fused kernel for plain parameters, the multi-tensor path for FSDP's (issue 14)."""

from __future__ import annotations

import torch

from unimedvl.train.config import OptimConfig
from unimedvl.train.trainer import build_optimizer


def test_the_fused_and_multi_tensor_optimizers_take_the_same_steps_as_the_reference_loop() -> None:
    torch.manual_seed(0)
    start = [torch.randn(64, 32), torch.randn(32)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(5)]
    config = OptimConfig(lr=1e-2, weight_decay=0.1)
    results = {}
    for label, make in (("fused", lambda ps: build_optimizer(ps, config, sharded=False)),
                        ("foreach", lambda ps: build_optimizer(ps, config, sharded=True)),
                        ("loop", lambda ps: torch.optim.AdamW(ps, lr=config.lr, betas=config.betas, eps=config.eps,
                                                             weight_decay=config.weight_decay, foreach=False))):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        optimizer = make(params)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            optimizer.step()
        results[label] = params
        assert optimizer.defaults.get("fused" if label == "fused" else "foreach") is (label != "loop")
    for label in ("fused", "foreach"):
        for a, b, s in zip(results[label], results["loop"], start):
            assert not torch.equal(a, s)  # it moved
            assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), label
