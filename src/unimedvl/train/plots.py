"""Loss-curve plot per stage."""

from __future__ import annotations

from pathlib import Path

from unimedvl.utils.figures import write_figure


def plot_losses(history: list[dict], path: Path, *, title: str) -> None:
    if not history:
        return
    steps = [h["step"] for h in history]

    def draw(ax) -> None:  # noqa: ANN001
        for key in ("loss", "ce", "mse"):
            ax.plot(steps, [h[key] for h in history], label=key)
        ax.set_xlabel("step")
        ax.set_title(f"{title}: training loss")
        ax.legend()

    write_figure(path, draw, size=(6.4, 3.6))
