"""The one test of "a usable number" that every option, recipe and config check shares."""

from __future__ import annotations

import math


def is_finite_number(value: object, *, integer: bool = False) -> bool:
    """A real int (or float, unless `integer`) that is neither NaN nor infinite; bools are not numbers here."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True  # every int is finite (and math.isfinite overflows on very large ones)
    return not integer and isinstance(value, float) and math.isfinite(value)
