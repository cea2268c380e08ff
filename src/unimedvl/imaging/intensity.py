"""How grey values become 8-bit display values: one rule per modality, used by every reader.

* CT: a window in Hounsfield units (a named preset or `(center, width)`);
* MRI: the 1st-99th percentile of the non-zero voxels (background excluded);
* everything else (radiographs, 16-bit PNGs, ultrasound, ...): the 0.5th-99.5th percentile.

The corpus builder, the CLI, the HTTP API and the web page all read through these functions, so a
16-bit PNG or a DICOM slice looks the same wherever it enters. Torch-free (the corpus imports it).
"""

from __future__ import annotations

from typing import Union

import numpy as np

CT_WINDOWS = {"lung": (-600.0, 1500.0), "mediastinum": (40.0, 400.0), "soft_tissue": (40.0, 400.0),
              "bone": (400.0, 1800.0), "brain": (40.0, 80.0), "abdomen": (50.0, 400.0)}
DEFAULT_CT_WINDOW = "soft_tissue"

Window = Union[str, tuple[float, float]]


def resolve_window(window: Window) -> tuple[float, float]:
    """A preset name or `(center, width)` -> `(center, width)`; ValueError naming the problem."""
    if isinstance(window, str):
        if window not in CT_WINDOWS:
            raise ValueError(f"unknown window {window!r}; use one of {', '.join(sorted(CT_WINDOWS))} or CENTER,WIDTH")
        return CT_WINDOWS[window]
    try:
        center, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"a window is a preset name or (center, width), got {window!r}") from None
    if not (np.isfinite(center) and np.isfinite(width) and width > 0):
        raise ValueError(f"a window needs a finite center and a width > 0, got ({center}, {width})")
    return center, width


def parse_window(text: str) -> Window:
    """`"lung"` or `"-600,1500"` (CLI and form fields) -> a window; ValueError on anything else."""
    text = text.strip()
    if "," in text:
        parts = text.split(",")
        if len(parts) != 2:
            raise ValueError(f"a window is PRESET or CENTER,WIDTH, got {text!r}")
        try:
            window = (float(parts[0]), float(parts[1]))
        except ValueError:
            raise ValueError(f"a window is PRESET or CENTER,WIDTH, got {text!r}") from None
        resolve_window(window)
        return window
    resolve_window(text)
    return text


def _stretch(array: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """[lo, hi] -> 0-255, clipped, rounded half up (every rule below ends here)."""
    return ((np.clip(array, lo, hi) - lo) / (hi - lo) * 255.0 + 0.5).astype(np.uint8)


def window(array: np.ndarray, center: float, width: float) -> np.ndarray:
    return _stretch(array, center - width / 2, center + width / 2)


def percentile_normalise(array: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Stretch the [low, high] percentiles of the non-zero values to 0-255 (all values when every one is zero)."""
    values = array[array != 0] if np.any(array != 0) else array.reshape(-1)
    lo, hi = np.percentile(values, [low, high]) if values.size else (0.0, 1.0)
    return _stretch(array, lo, hi if hi > lo else lo + 1.0)


def stretch_percentiles(array: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Stretch the [low, high] percentiles of all values to 0-255 (radiographs, 16-bit PNGs)."""
    lo, hi = np.percentile(array, [low, high]) if array.size else (0.0, 1.0)
    return _stretch(array, lo, hi if hi > lo else lo + 1.0)


def grey_to_uint8(values: np.ndarray, modality: str | None, window_: Window | None = None) -> np.ndarray:
    """The display rule: a window when one is given (or for CT), else the modality's percentile stretch."""
    values = np.asarray(values, dtype=np.float32)
    if not np.isfinite(values).all():  # NaN / inf (a damaged or overflowing file) read as background
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    if window_ is not None or modality == "ct":
        center, width = resolve_window(window_ if window_ is not None else DEFAULT_CT_WINDOW)
        return window(values, center, width)
    if modality == "mri":
        return percentile_normalise(values)
    return stretch_percentiles(values)
