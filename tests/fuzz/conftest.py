"""Hypothesis settings for the fuzz tests: derandomised (CI reruns the same cases), no example database.

`UNIMEDVL_FUZZ_SCALE` multiplies every boundary's case count and `UNIMEDVL_FUZZ_RANDOM=1` draws new cases
(bench/fuzz.py sets both).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

SCALE = float(os.environ.get("UNIMEDVL_FUZZ_SCALE", "1"))
RANDOM = os.environ.get("UNIMEDVL_FUZZ_RANDOM") == "1"  # bench/fuzz.py --random: cases CI never runs


def cases(count: int) -> settings:
    """Settings for one boundary: `count` cases in CI (times the scale)."""
    return settings(max_examples=max(1, int(count * SCALE)), deadline=None, derandomize=not RANDOM, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])
