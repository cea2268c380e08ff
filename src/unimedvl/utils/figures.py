"""One way to draw a figure to a PNG file: matplotlib's Agg backend, no timestamps, written atomically."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable

from unimedvl.utils.files import atomic_write_bytes


def write_figure(path: Path, draw: Callable[[Any], None], *, size: tuple[float, float] = (6.4, 3.4)) -> None:
    """`draw(ax)` on a fresh figure of `size` inches (100 dpi), saved as a reproducible PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=100)
    draw(ax)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})  # no version string: same bytes every run
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
