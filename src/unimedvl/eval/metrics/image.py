"""Image metrics with their conventions stated (docs/evaluation.md).

* PSNR and SSIM follow the BCI / virtual-staining protocol: both images as 8-bit RGB (data range
  255), SSIM with scikit-image's defaults (7x7 uniform window, K1 = 0.01, K2 = 0.03, sample
  covariance), computed per channel and averaged over the channels. Images of other sizes are
  refused, not resized.
* Dice and IoU for masks: a predicted mask is binarised at half its range (a generated image's
  grey level >= 128), the reference at > 0; both empty counts as a perfect match.
* The Fréchet distance between two sets of features (FID when the features are Inception's):
  ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), the square-root trace taken from the
  eigenvalues of S_a^(1/2) S_b S_a^(1/2) (symmetric, so no complex round-off).
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.ndimage import uniform_filter

from unimedvl.errors import InputError


def as_rgb8(image: Image.Image | np.ndarray) -> np.ndarray:
    """`[H, W, 3]` uint8: PIL images are converted to RGB; arrays must already be uint8 RGB or grey."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise InputError(f"images for PSNR / SSIM must be 8-bit, got {array.dtype}")
    return np.repeat(array[..., None], 3, axis=-1) if array.ndim == 2 else array


def _pair(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = as_rgb8(a).astype(np.float64), as_rgb8(b).astype(np.float64)
    if x.shape != y.shape:
        raise InputError(f"images differ in size: {x.shape[1]}x{x.shape[0]} vs {y.shape[1]}x{y.shape[0]}")
    return x, y


def psnr(prediction: Image.Image | np.ndarray, target: Image.Image | np.ndarray) -> float:
    x, y = _pair(prediction, target)
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def _ssim_channel(x: np.ndarray, y: np.ndarray, window: int = 7) -> float:
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    n = window * window
    correction = n / (n - 1)  # sample covariance, as scikit-image
    mean = lambda z: uniform_filter(z, size=window, mode="reflect")  # noqa: E731
    ux, uy = mean(x), mean(y)
    vx = correction * (mean(x * x) - ux * ux)
    vy = correction * (mean(y * y) - uy * uy)
    vxy = correction * (mean(x * y) - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = (window - 1) // 2  # scikit-image averages away from the borders
    return float(s[pad:-pad, pad:-pad].mean())


def ssim(prediction: Image.Image | np.ndarray, target: Image.Image | np.ndarray) -> float:
    x, y = _pair(prediction, target)
    if min(x.shape[:2]) < 7:
        raise InputError(f"SSIM needs images of at least 7x7 pixels, got {x.shape[1]}x{x.shape[0]}")
    return float(np.mean([_ssim_channel(x[..., c], y[..., c]) for c in range(x.shape[-1])]))


def binary_mask(image: Image.Image | np.ndarray, *, predicted: bool) -> np.ndarray:
    array = np.asarray(image.convert("L") if isinstance(image, Image.Image) else image)
    if array.ndim == 3:
        array = array.mean(axis=-1)
    return array >= 128 if predicted else array > 0


def dice_iou(prediction: Image.Image | np.ndarray, target: Image.Image | np.ndarray) -> tuple[float, float]:
    p, t = binary_mask(prediction, predicted=True), binary_mask(target, predicted=False)
    if p.shape != t.shape:
        raise InputError(f"masks differ in size: {p.shape[::-1]} vs {t.shape[::-1]}")
    inter, total, union = np.logical_and(p, t).sum(), p.sum() + t.sum(), np.logical_or(p, t).sum()
    if union == 0:
        return 1.0, 1.0
    return float(2 * inter / total), float(inter / union)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature rows `a` `[N, D]` and `b` `[M, D]`."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise InputError(f"Fréchet distance needs two feature sets [N, D] with N >= 2, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    trace_sqrt = float(np.sqrt(np.clip(inner, 0, None)).sum())
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * trace_sqrt)
