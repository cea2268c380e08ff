"""Shared by the fuzz tests: the hypothesis settings per boundary, JSON-like values, and byte-level mutations
of a valid file.

The settings: derandomised (CI reruns the same cases), no example database.

`UNIMEDVL_FUZZ_SCALE` multiplies every boundary's case count and `UNIMEDVL_FUZZ_RANDOM=1` draws new cases
(bench/fuzz.py sets both).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

SCALE = float(os.environ.get("UNIMEDVL_FUZZ_SCALE", "1"))
RANDOM = os.environ.get("UNIMEDVL_FUZZ_RANDOM") == "1"  # bench/fuzz.py --random: cases CI never runs


def cases(count: int) -> settings:
    """Settings for one boundary: `count` cases in CI (times the scale)."""
    return settings(max_examples=max(1, int(count * SCALE)), deadline=None, derandomize=not RANDOM, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20))
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=8)


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """`original` with a few bytes overwritten, a run inserted or removed, or cut short: what a damaged file is."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        # Half the edits land in the first 2 KiB, where headers (and most parsing decisions) are.
        end = len(data) if draw(st.booleans()) else min(len(data), 2048)
        position = draw(st.integers(0, max(0, end - 1)))
        if kind == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[position] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80]))
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[position:position + draw(st.integers(1, 64))]
        elif kind == "truncate":
            del data[position:]
    return bytes(data)
