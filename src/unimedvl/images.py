"""Image input/output and the reference resize rules.

* :func:`load_image` turns a path, PIL image or numpy array into an RGB PIL image, with clear
  errors for missing, unreadable, truncated or oversized files.
* :class:`ResizeRule` is the reference `MaxLongEdgeMinShortEdgeResize`: bounded long edge, minimum
  short edge, sides rounded to a stride (Python's round-half-to-even, as the reference), a pixel
  budget; bicubic resampling (PIL's, antialiased).
* :func:`to_tensor` / :func:`to_uint8` convert between PIL and `[3, H, W]` float in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image

from unimedvl.errors import InputError

ImageLike = Union[str, Path, Image.Image, np.ndarray]

DEFAULT_MAX_IMAGE_PIXELS = 20_000_000  # the reference refuses images above 20 MP


@dataclass(frozen=True)
class ResizeRule:
    max_size: int
    min_size: int
    stride: int
    max_pixels: int = 14 * 14 * 9 * 1024  # 1,806,336

    def _divisible(self, value: float) -> int:
        return max(self.stride, int(round(value / self.stride) * self.stride))

    def _scaled(self, width: int, height: int, scale: float) -> tuple[int, int]:
        return self._divisible(round(width * scale)), self._divisible(round(height * scale))

    def target_size(self, width: int, height: int, img_num: int = 1) -> tuple[int, int]:
        """Output (width, height) for an input of (width, height), exactly as the reference computes it."""
        scale = min(self.max_size / max(width, height), 1.0)
        scale = max(scale, self.min_size / min(width, height))
        new_w, new_h = self._scaled(width, height, scale)
        if new_w * new_h > self.max_pixels / img_num:
            new_w, new_h = self._scaled(new_w, new_h, self.max_pixels / img_num / (new_w * new_h))
        if max(new_w, new_h) > self.max_size:
            new_w, new_h = self._scaled(new_w, new_h, self.max_size / max(new_w, new_h))
        return new_w, new_h

    def __call__(self, image: Image.Image, img_num: int = 1) -> Image.Image:
        size = self.target_size(*image.size, img_num=img_num)
        return image if size == image.size else image.resize(size, Image.BICUBIC)


# The rules the reference scripts use (reference-architecture.md §3.1).
UNIMEDVL_VAE = ResizeRule(1024, 32, 16)  # generator VAE transform
UNIMEDVL_GEN_VIT = ResizeRule(980, 387, 14)  # generator ViT transform
UNIMEDVL_VQA_VIT = ResizeRule(980, 378, 14, 2_007_040)  # VQA script ViT transform
BAGEL_VAE = ResizeRule(1024, 512, 16)
BAGEL_VIT = ResizeRule(980, 224, 14)
RESIZE_RULES = {
    "unimedvl_generator_vae": UNIMEDVL_VAE,
    "unimedvl_generator_vit": UNIMEDVL_GEN_VIT,
    "unimedvl_vqa_vit": UNIMEDVL_VQA_VIT,
    "bagel_vae": BAGEL_VAE,
    "bagel_vit": BAGEL_VIT,
}


def generation_target_size(width: int, height: int) -> tuple[int, int]:
    """Output (height, width) for an edit of a width x height input (the inferencer's helper)."""
    w, h = UNIMEDVL_VAE.target_size(width, height)
    return h, w


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(arr.astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


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


def load_image(source: ImageLike, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Read an image as RGB. Raises :class:`InputError` naming the file and the problem."""
    if isinstance(source, Image.Image):
        image, name = source, "image"
    elif isinstance(source, np.ndarray):
        image, name = _from_array(source), "image array"
    elif isinstance(source, (str, Path)):
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise InputError(f"image file not found: {path}")
        try:
            with Image.open(path) as opened:
                w, h = opened.size
                if w * h > max_pixels:
                    raise InputError(f"{path}: {w}x{h} image has more than {max_pixels:,} pixels")
                opened.load()  # truncated files raise here (PIL's LOAD_TRUNCATED_IMAGES stays off)
                image = opened.copy()
        except InputError:
            raise
        except Image.DecompressionBombError:
            raise InputError(f"{path}: image is too large to decode safely") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise InputError(f"{path}: cannot read image ({exc})") from None
    else:
        raise InputError(f"expected an image path, PIL image or numpy array, got {type(source).__name__}")
    w, h = image.size
    if w * h > max_pixels:
        raise InputError(f"{name}: {w}x{h} image has more than {max_pixels:,} pixels")
    if w < 1 or h < 1:
        raise InputError(f"{name}: empty image")
    return _to_rgb(image)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL -> `[3, H, W]` float32 in [-1, 1] (ToTensor then Normalize(0.5, 0.5))."""
    array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    return (array.float() / 255.0 - 0.5) / 0.5


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """`[3, H, W]` in [-1, 1] -> `[H, W, 3]` uint8, truncating like the reference."""
    x = (pixels.float() * 0.5 + 0.5).clamp(0, 1).permute(1, 2, 0) * 255
    return x.to(torch.uint8).cpu().numpy()
