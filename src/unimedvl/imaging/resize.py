"""The reference resize rules.

:class:`ResizeRule` is the reference `MaxLongEdgeMinShortEdgeResize`: bounded long edge, minimum
short edge, sides rounded to a stride (Python's round-half-to-even, as the reference), a pixel
budget; bicubic resampling (PIL's, antialiased). A model's :class:`~unimedvl.config.ImageConfig`
gives the bounds, its patch or latent cell the stride.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from unimedvl.config import REFERENCE_MAX_PIXELS, ResizeBounds


@dataclass(frozen=True)
class ResizeRule:
    max_size: int
    min_size: int
    stride: int
    max_pixels: int = REFERENCE_MAX_PIXELS

    @classmethod
    def from_bounds(cls, bounds: ResizeBounds, stride: int) -> "ResizeRule":
        return cls(bounds.max_size, bounds.min_size, stride, bounds.max_pixels)

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


def scaled_to_stride(size: tuple[int, int], scale: float, stride: int) -> tuple[int, int]:
    """Both sides times `scale`, each rounded to a multiple of `stride` (at least one stride).

    How a training sample's VAE images keep their relative sizes, and how an edit is sized to a trained side."""
    return tuple(max(stride, round(side * scale / stride) * stride) for side in size)  # type: ignore[return-value]


def resize_by(image: Image.Image, scale: float, stride: int) -> Image.Image:
    """`image` resized by :func:`scaled_to_stride` (bicubic; the same object when the size does not change)."""
    size = scaled_to_stride(image.size, scale, stride)
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
