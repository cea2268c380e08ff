from __future__ import annotations

import pytest
import torch

from unimedvl.errors import InputError
from unimedvl.model.sampling import GuidanceOptions, combine_guidance, flow_schedule, guidance_active, sample_flow


def test_schedule_matches_the_reference_formula() -> None:
    t, dt = flow_schedule(6, 3.0)
    u = torch.linspace(1, 0, 6)
    full = 3 * u / (1 + 2 * u)
    assert torch.equal(t, full[:-1]) and torch.equal(dt, full[:-1] - full[1:])
    assert [round(v, 3) for v in t.tolist()] == [1.0, 0.923, 0.818, 0.667, 0.429]
    assert abs(float(dt.sum()) - 1.0) < 1e-6


def test_interval_is_open_below_closed_above() -> None:
    assert guidance_active(torch.tensor(1.0), (0.4, 1.0))
    assert not guidance_active(torch.tensor(0.4), (0.4, 1.0))
    assert guidance_active(torch.tensor(0.5), (0.0, 1.0))


def test_guidance_combinations() -> None:
    g = torch.Generator().manual_seed(0)
    vc, vt, vi = (torch.randn(5, 4, generator=g) for _ in range(3))
    # text scale <= 1: conditional velocity, whatever the image scale (the reference's rule)
    assert torch.equal(combine_guidance(vc, vt, vi, text_scale=1.0, image_scale=3.0, renorm_type="global",
                                        renorm_min=0.0), vc)
    out = combine_guidance(vc, vt, None, text_scale=4.0, image_scale=1.0, renorm_type="global", renorm_min=0.0)
    raw = vt + 4 * (vc - vt)
    assert torch.allclose(out, raw * min(1.0, float(vc.norm() / (raw.norm() + 1e-8))))
    out = combine_guidance(vc, vt, vi, text_scale=4.0, image_scale=2.0, renorm_type="text_channel", renorm_min=0.0)
    scale = (vc.norm(dim=-1, keepdim=True) / (raw.norm(dim=-1, keepdim=True) + 1e-8)).clamp(0, 1)
    assert torch.allclose(out, vi + 2 * (raw * scale - vi))
    out = combine_guidance(vc, vt, vi, text_scale=4.0, image_scale=2.0, renorm_type="channel", renorm_min=1.0)
    assert torch.allclose(out, vi + 2 * (raw - vi))  # renorm_min=1 disables the renorm


def test_sampler_integrates_a_known_field_and_calls_only_needed_branches() -> None:
    target = torch.randn(4, 3)
    noise = torch.randn(4, 3)
    calls: list[str] = []

    def velocity(branch, x, t):  # noqa: ANN001, ANN202
        calls.append(branch)
        return noise - target  # the exact rectified-flow velocity of a straight path

    x = sample_flow(noise, velocity, GuidanceOptions(num_timesteps=7, timestep_shift=2.0, text_scale=1.0))
    assert torch.allclose(x, target, atol=1e-5)
    assert calls == ["cond"] * 6
    calls.clear()
    sample_flow(noise, velocity, GuidanceOptions(num_timesteps=6, timestep_shift=3.0, text_scale=4.0,
                                                 image_scale=2.0, interval=(0.5, 1.0)))
    assert calls == ["cond", "text_uncond", "image_uncond"] * 4 + ["cond"]


def test_invalid_options_are_named() -> None:
    with pytest.raises(InputError, match="num_timesteps"):
        GuidanceOptions(num_timesteps=1)
    with pytest.raises(InputError, match="interval"):
        GuidanceOptions(interval=(0.8, 0.2))
    with pytest.raises(InputError, match="renorm_type"):
        GuidanceOptions(renorm_type="other")  # type: ignore[arg-type]
    assert GuidanceOptions.editing().renorm_type == "text_channel" and GuidanceOptions.editing().image_scale == 2.0


def test_feature_caching_extrapolates_between_network_calls() -> None:
    """cache_interval: the network every N steps (after two warm-up calls), first-order Taylor in t between."""
    import torch

    from unimedvl.errors import InputError
    from unimedvl.model.sampling import GuidanceOptions, sample_flow

    calls: list[float] = []
    a, b = torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), torch.randn(6, 4)

    def linear_in_t(branches, x, t):  # noqa: ANN001, ANN202  - a velocity exactly linear in t, per branch
        calls.append(float(t))
        return {name: a * (k + 1) + b * t for k, name in enumerate(branches)}

    noise = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    options = GuidanceOptions.editing(num_timesteps=10)
    exact = sample_flow(noise, None, options, velocities=linear_in_t)
    assert len(calls) == 9
    calls.clear()
    records = []
    cached = sample_flow(noise, None, GuidanceOptions.editing(num_timesteps=10, cache_interval=2),
                         velocities=linear_in_t, on_step=lambda i, n, r: records.append(r.computed))
    assert records == [True, True, True, False, True, False, True, False, True] and len(calls) == 6
    assert torch.allclose(cached, exact, atol=1e-5)  # exact for a velocity linear in t
    for bad in (0, 11, 1.5, True):
        with pytest.raises(InputError, match="cache_interval"):
            GuidanceOptions(cache_interval=bad)
