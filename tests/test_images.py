from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unimedvl.errors import InputError
from unimedvl.imaging.pixels import load_image, to_tensor, to_uint8
from unimedvl.imaging.resize import RESIZE_RULES, ResizeRule, generation_target_size


def test_resize_rules_match_the_reference_table(fixture_dir: Path) -> None:
    rules = json.loads((fixture_dir / "fixture.json").read_text())["cases"]["case_f"]["resize_rules"]
    for name, rule in RESIZE_RULES.items():
        spec = rules[name]
        assert rule == ResizeRule(spec["max_size"], spec["min_size"], spec["stride"], spec["max_pixels"])
        for row in spec["results"]:
            assert list(rule.target_size(*row["in_wh"])) == row["out_wh"], (name, row)
    for row in rules["inferencer_target_size_hw"]:
        assert list(generation_target_size(*row["in_wh"])) == row["out_hw"]


def test_resize_applies_bicubic_only_when_needed() -> None:
    image = Image.new("RGB", (64, 48), (10, 20, 30))
    rule = ResizeRule(1024, 32, 16)
    assert rule(image) is image
    assert rule(Image.new("RGB", (70, 56))).size == (64, 64)


def test_pixel_conversion_round_trip() -> None:
    array = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    pixels = to_tensor(Image.fromarray(array))
    assert pixels.shape == (3, 5, 7) and pixels.dtype == torch.float32
    assert pixels.min() >= -1 and pixels.max() <= 1
    assert np.abs(to_uint8(pixels).astype(int) - array.astype(int)).max() <= 1


def test_inputs_of_many_kinds(tmp_path: Path, mri_path: Path) -> None:
    assert load_image(mri_path).mode == "RGB"  # 16-bit greyscale PNG, window-normalised
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert load_image(rgba).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white, as the reference
    assert load_image(np.zeros((8, 9), dtype=np.uint8)).size == (9, 8)
    assert load_image(np.ones((3, 8, 9), dtype=np.float32)).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.png", "image file not found"),
        (lambda p: (p / "bad.png").write_bytes(b"not an image") and p / "bad.png", "cannot read image"),
    ],
)
def test_bad_files_are_named(tmp_path: Path, make, message: str) -> None:  # noqa: ANN001
    with pytest.raises(InputError, match=message):
        load_image(make(tmp_path))


def test_truncated_and_huge_images(tmp_path: Path, cxr_path: Path) -> None:
    data = cxr_path.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.png: cannot read image"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(InputError, match="more than 1,000 pixels"):
        load_image(cxr_path, max_pixels=1000)
    with pytest.raises(InputError, match="must be uint8"):
        load_image(np.zeros((4, 4), dtype=np.int64))
    with pytest.raises(InputError, match="HxW"):
        load_image(np.zeros((4, 4, 2), dtype=np.uint8))
    with pytest.raises(InputError, match="expected an image path"):
        load_image(42)  # type: ignore[arg-type]
