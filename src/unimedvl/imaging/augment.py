"""Training-time augmentation of images a model reads (understanding inputs): images as users send them.

A user's chest X-ray may arrive at 28 px or 2,000 px, cropped differently, from a 16-bit DICOM
exported under another window. :func:`augment_for_reading` draws, from a seeded generator:
a crop keeping 70-100 % of each side (90-100 % below 64 px), a resolution (the short side re-sampled to 24 px ... its
native size, log-uniformly, then back up, so that a 224 px and a 28 px image of the same kind read
alike), and an intensity window (the 0-255 range re-mapped through a random window and gamma, as a
different DICOM window or a 16-bit export converted to 8 bits would). Every draw comes from `rng`.
"""

from __future__ import annotations

import math
import random

import numpy as np
from PIL import Image

SMALL_SIDE = 64  # images whose short side is below this are cropped less


def augment_for_reading(image: Image.Image, rng: random.Random) -> Image.Image:
    """One random crop, resolution and intensity window of an RGB image (same mode and a similar size back)."""
    width, height = image.size
    # A 28 px image has no margin to spare: a 70 % crop of a BreastMNIST lesion cuts the lesion itself.
    least = 0.7 if min(width, height) >= SMALL_SIDE else 0.9
    keep_w, keep_h = rng.uniform(least, 1.0), rng.uniform(least, 1.0)
    crop_w, crop_h = max(1, round(width * keep_w)), max(1, round(height * keep_h))
    left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
    image = image.crop((left, top, left + crop_w, top + crop_h))
    short = min(image.size)
    if short > 24:
        side = math.exp(rng.uniform(math.log(24), math.log(short)))
        scale = side / short
        small = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BICUBIC)
        image = small.resize(image.size, Image.BICUBIC)
    low, high, gamma = rng.uniform(0.0, 0.15), rng.uniform(0.85, 1.0), math.exp(rng.uniform(-0.35, 0.35))
    values = np.asarray(image, dtype=np.float32) / 255.0
    values = np.clip((values - low) / (high - low), 0.0, 1.0) ** gamma
    return Image.fromarray((values * 255.0 + 0.5).astype(np.uint8), mode=image.mode)
