"""Loss-curve plot per stage."""

from __future__ import annotations

from pathlib import Path

from unimedvl.utils.files import atomic_write_bytes


def plot_losses(history: list[dict], path: Path, *, title: str) -> None:
    if not history:
        return
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for key in ("loss", "ce", "mse"):
        ax.plot(steps, [h[key] for h in history], label=key)
    ax.set_xlabel("step")
    ax.set_title(f"{title}: training loss")
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
