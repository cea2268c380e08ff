"""Image input/output: paths, PIL images or arrays in; `[3, H, W]` tensors in [-1, 1] and back.

* :func:`load_image` turns a path, bytes, PIL image or numpy array into an RGB PIL image (files
  through the medical image reader), with clear errors for missing, unreadable, truncated or
  oversized files.
* :func:`to_tensor` / :func:`to_uint8` convert between PIL and `[3, H, W]` float in [-1, 1].
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image

from unimedvl.errors import InputError
from unimedvl.imaging.reader import DEFAULT_MAX_IMAGE_PIXELS, ReadOptions, picture_to_rgb, read_medical_image

ImageLike = Union[str, Path, bytes, Image.Image, np.ndarray]


def _from_array(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] > 4:
        array = np.moveaxis(array, 0, -1)  # CHW -> HWC
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise InputError(f"image array must be HxW, HxWx3 or HxWx4, got shape {tuple(array.shape)}")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
            raise InputError(f"image array must be uint8, or float in [0, 1]; got {array.dtype}")
        if array.min() < 0 or array.max() > 1:
            raise InputError("float image arrays must hold values in [0, 1]")
        array = (array * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(array)


def load_image(source: ImageLike, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
               options: ReadOptions | None = None) -> Image.Image:
    """Read an image as 8-bit RGB. Raises :class:`InputError` naming the file and the problem.

    Paths and bytes go through the one medical image reader (`imaging/reader.py`): PNG / JPEG /
    WebP in 8 or 16 bit, DICOM and NIfTI, with `options` choosing the slice, frame or window.
    """
    if isinstance(source, Image.Image):
        image, name = source, "image"
    elif isinstance(source, np.ndarray):
        image, name = _from_array(source), "image array"
    elif isinstance(source, (str, Path, bytes)):
        return read_medical_image(source, options=options, max_pixels=max_pixels).image
    else:
        raise InputError(f"expected an image path, bytes, PIL image or numpy array, got {type(source).__name__}")
    w, h = image.size
    if w * h > max_pixels:
        raise InputError(f"{name}: {w}x{h} image has more than {max_pixels:,} pixels")
    if w < 1 or h < 1:
        raise InputError(f"{name}: empty image")
    return picture_to_rgb(image)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL -> `[3, H, W]` float32 in [-1, 1] (ToTensor then Normalize(0.5, 0.5))."""
    array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    return (array.float() / 255.0 - 0.5) / 0.5


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """`[3, H, W]` in [-1, 1] -> `[H, W, 3]` uint8, truncating like the reference."""
    x = (pixels.float() * 0.5 + 0.5).clamp(0, 1).permute(1, 2, 0) * 255
    return x.to(torch.uint8).cpu().numpy()


IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def output_format(path: str | Path) -> str:
    """The PIL format an output file name asks for; refuses other suffixes (checked before any work)."""
    fmt = IMAGE_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise InputError(f"--out must end in .png, .jpg or .webp, got {Path(path).name}")
    return fmt


def save_image(image: Image.Image, path: str | Path) -> None:
    """Write an image atomically in the format its suffix names."""
    from io import BytesIO

    from unimedvl.utils.files import atomic_write_bytes

    buffer = BytesIO()
    image.save(buffer, format=output_format(path))
    atomic_write_bytes(path, buffer.getvalue())
