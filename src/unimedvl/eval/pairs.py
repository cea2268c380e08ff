"""`unimedvl eval pairs`: score generated images against references, files matched by name.

Images: PSNR and SSIM (8-bit RGB, SSIM averaged over channels; `metrics/image.py`). Masks
(`masks=True`): Dice and IoU, the prediction binarised at grey level 128, the reference at > 0.
Files match by stem (`case1.png` pairs with `case1.jpg`); unmatched files are listed, not scored.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from unimedvl.errors import InputError
from unimedvl.eval.metrics.image import dice_iou, psnr, ssim
from unimedvl.imaging.pixels import load_image
from unimedvl.utils.files import atomic_write_text

SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def _images(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputError(f"{what} folder not found: {folder}")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in SUFFIXES:
            if path.stem in files:
                raise InputError(f"{what} folder holds two images named {path.stem!r}: {files[path.stem].name}, {path.name}")
            files[path.stem] = path
    return files


def score_pairs(pred: Path, target: Path, *, masks: bool = False) -> dict:
    predictions, targets = _images(pred, "--pred"), _images(target, "--target")
    names = sorted(set(predictions) & set(targets))
    if not names:
        raise InputError(f"no file names in common between {pred} and {target}")
    per_file: dict[str, dict[str, float]] = {}
    for name in names:
        if masks:  # masks keep their own mode (grey levels or 0 / 1), not converted to RGB
            dice, iou = dice_iou(Image.open(predictions[name]), Image.open(targets[name]))
            per_file[name] = {"dice": dice, "iou": iou}
        else:
            a, b = load_image(predictions[name]), load_image(targets[name])
            per_file[name] = {"psnr": psnr(a, b), "ssim": ssim(a, b)}
    keys = ("dice", "iou") if masks else ("psnr", "ssim")
    means = {k: sum(v[k] for v in per_file.values()) / len(per_file) for k in keys}
    return {"n": len(names), **means, "per_file": per_file,
            "unmatched": {"pred": sorted(set(predictions) - set(targets)), "target": sorted(set(targets) - set(predictions))},
            "protocol": ("masks: prediction >= 128, reference > 0" if masks else
                         "8-bit RGB, data range 255; SSIM 7x7 uniform window, averaged over R, G, B")}


def write_pairs(pred: Path, target: Path, out: Path, *, masks: bool = False) -> dict:
    results = score_pairs(pred, target, masks=masks)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, sort_keys=True) + "\n")
    return results
