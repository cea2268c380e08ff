"""Each CLI command end to end on the built-in tiny model; bad input prints one line, exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from unimedvl.cli import main


def test_info_full_config_reports_14_6_billion(capsys) -> None:
    assert main(["info", "--config", "full"]) == 0
    out = capsys.readouterr().out
    assert "total: 14.61 B parameters" in out
    assert "LLM generation expert (*_moe_gen)" in out and "memory bfloat16: 27.21 GiB" in out


def test_info_on_a_checkpoint_agrees_with_its_file(capsys, fixture_dir: Path) -> None:
    assert main(["info", "--checkpoint", str(fixture_dir)]) == 0
    out = capsys.readouterr().out
    assert "total: 1.22 M parameters (1,221,056;" in out
    assert "ema.safetensors: 111 tensors, 1,221,056 values, dtype BF16" in out
    assert "sampling: BAGEL's text-to-image and UniMedVL's editing defaults (no sampling_config.json)" in out


def test_info_names_the_guidance_a_checkpoint_recommends(capsys) -> None:
    from unimedvl.assets import UNIMEDVL_TINY

    assert main(["info", "--checkpoint", str(UNIMEDVL_TINY)]) == 0
    assert "sampling (sampling_config.json, over the defaults): text_to_image text_scale 6.0" in capsys.readouterr().out


def test_ask_single_and_batch(tmp_path: Path, capsys, cxr_path: Path, mri_path: Path) -> None:
    assert main(["ask", str(cxr_path), "-q", "What imaging modality is this?", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip()
    batch = tmp_path / "questions.jsonl"
    lines = [
        {"id": "a", "image": str(cxr_path), "question": "Does this chest X-ray show pneumonia?"},
        {"image": [str(cxr_path), str(mri_path)], "question": "Compare these."},
        {"image": "missing.png", "question": "Broken?"},
        "not json",
        {"image": str(cxr_path), "question": ""},
    ]
    batch.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "answers.jsonl"
    assert main(["ask", "--batch", str(batch), "--out", str(out), "--max-new-tokens", "3"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3, 4, 5]
    assert records[0]["id"] == "a" and "answer" in records[0] and "answer" in records[1]
    assert "image file not found" in records[2]["error"]
    assert records[3]["error"].startswith("invalid JSON")
    assert "question is empty" in records[4]["error"]


def test_ask_and_edit_read_dicom_and_nifti(tmp_path: Path, capsys) -> None:
    """Issue 15: `ask scan.dcm` and `edit volume.nii.gz --slice N` through the one medical image reader."""
    import nibabel
    import numpy as np
    from pydicom.data import get_testdata_file

    ct = get_testdata_file("CT_small.dcm")
    assert main(["ask", ct, "-q", "What imaging modality is this?", "--window", "lung", "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.strip()
    volume = np.random.default_rng(0).normal(100, 20, (48, 48, 30)).astype(np.float32)
    volume[10:30, 10:30, 20:] += 300
    path = tmp_path / "brain.nii.gz"
    nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), path)
    assert main(["ask", str(path), "-q", "What imaging modality is this?", "--slice", "25", "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.strip()
    out = tmp_path / "edited.png"
    assert main(["edit", str(path), "Increase the resolution 2 times.", "--slice", "25", "-o", str(out),
                 "--steps", "3"]) == 0
    assert Image.open(out).size[0] >= 48
    assert main(["ask", str(path), "-q", "hi", "--slice", "30"]) == 2
    assert "slice 30 requested, the volume has 30 along axis 2" in capsys.readouterr().err


def test_generate_and_edit_write_images(tmp_path: Path, capsys, mri_path: Path, fixture_dir: Path) -> None:
    out = tmp_path / "gen.png"
    assert main(["generate", "A chest X-ray with pneumonia.", "-o", str(out), "--height", "32", "--width", "64",
                 "--steps", "3", "-c", str(fixture_dir)]) == 0
    assert Image.open(out).size == (64, 32)
    edited = tmp_path / "edit.png"
    assert main(["edit", str(mri_path), "Convert to FLAIR.", "-o", str(edited), "--steps", "3",
                 "--cfg-interval", "0.0,1.0", "-c", str(fixture_dir)]) == 0
    assert Image.open(edited).size == (240, 240)  # the reference's VAE rule keeps 240 px


def test_default_model_is_unimedvl_tiny_at_its_training_size(tmp_path: Path, mri_path: Path) -> None:
    from unimedvl.assets import UNIMEDVL_TINY, default_checkpoint

    assert default_checkpoint() == UNIMEDVL_TINY and (UNIMEDVL_TINY / "MODEL_CARD.md").is_file()
    out = tmp_path / "gen.png"
    assert main(["generate", "A chest X-ray with pneumonia.", "-o", str(out), "--steps", "3"]) == 0
    assert Image.open(out).size == (128, 128)  # image_config.json: trained at 64 and 128 px, default 128


@pytest.mark.parametrize(
    "argv, message",
    [
        (["ask", "/no/image.png", "-q", "hi"], "error: image file not found: /no/image.png"),
        (["ask", "-q", "hi", "--checkpoint", "/no/folder"], "error: checkpoint folder not found"),
        (["generate", "x", "--height", "33"], "error: height must be a multiple of 16"),
        (["generate", "x", "--steps", "1"], "error: num_timesteps must be an integer in [2, 1000]"),
        (["generate", "x", "-o", "out.gif"], "error: --out must end in .png"),
        (["edit", "img.png", "x", "--cfg-interval", "abc"], "error: --cfg-interval must look like"),
        (["info", "--config", "huge"], "error: unknown config preset"),
    ],
)
def test_bad_input_is_one_line(argv: list[str], message: str, capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(message) and not any("Traceback" in line for line in err)


def test_pickle_checkpoint_via_the_command_line(checkpoint_copy: Path) -> None:
    (checkpoint_copy / "ema.safetensors").unlink()
    (checkpoint_copy / "ema.pt").write_bytes(b"pickle")
    proc = subprocess.run([sys.executable, "-m", "unimedvl", "ask", "-q", "hi", "-c", str(checkpoint_copy)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "pickle" in proc.stderr and "Traceback" not in proc.stderr


def test_demo_runs_every_task(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--out", str(tmp_path), "--steps", "3", "--size", "32"]) == 0
    report = json.loads((tmp_path / "demo.json").read_text())
    assert {"answers", "ask_seconds", "generate_seconds", "edit_seconds"} <= set(report)
    assert [a["question"] for a in report["answers"]][1] == "Does this chest X-ray show pneumonia?"
    page = (tmp_path / "demo.html").read_text()
    assert page.count("data:image/png;base64,") >= 9 and "Does this chest X-ray show pneumonia?" in page
    assert Image.open(tmp_path / "generated_0.png").size == (32, 32)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bogus"], "error: No such command 'bogus'."),
        (["data", "bogus"], "error: No such command 'bogus'."),
        (["generate"], "error: Missing argument 'prompt'."),
        (["ask", "-q", "hi", "--max-new-tokens", "abc"], "error: Invalid value for '--max-new-tokens'"),
        (["ask", "-q", "hi", "--no-such-flag"], "error: No such option: --no-such-flag"),
        (["data", "build"], "error: Missing option '--out'"),
    ],
)
def test_usage_errors_are_one_line_with_status_2(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err


def test_the_python_entry_point_reports_usage_errors_the_same_way() -> None:
    proc = subprocess.run([sys.executable, "-m", "unimedvl", "bogus"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: No such command 'bogus'."


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "x", "-o", "out.gif"], "--out must end in .png"),
        (["generate", "x", "--height", "33"], "height must be a multiple of 16"),
        (["generate", "x", "--steps", "1"], "num_timesteps must be an integer in [2, 1000]"),
        (["generate", "x", "--renorm", "sideways"], "renorm_type must be global"),
        (["generate", "x", "--cfg-text", "inf"], "text_scale must be a finite number"),
        (["generate", "x", "--cfg-text", "nan"], "text_scale must be a finite number"),
        (["generate", "x", "--shift", "inf"], "timestep_shift must be a finite number"),
        (["edit", "{mri}", "x", "--renorm-min", "nan"], "renorm_min must be a finite number"),
        (["edit", "{mri}", "x", "--cfg-interval", "0,nan"], "guidance interval"),
        (["generate", "x", "--steps", "1000000"], "num_timesteps must be an integer in [2, 1000]"),
        (["generate", "x", "--height", "0"], "height must be a multiple of 16"),
        (["edit", "/no/image.png", "x"], "image file not found"),
        (["edit", "{mri}", "x", "-o", "edited.tiff"], "--out must end in .png"),
        (["ask", "/no/image.png", "-q", "hi"], "image file not found"),
        (["ask", "{ct}", "-q", "hi", "--window", "lungs"], "--window: unknown window 'lungs'"),
        (["ask", "{ct}", "-q", "hi", "--slice", "3"], "frame 3 requested, the file has 1"),
        (["edit", "{ct}", "x", "--axis", "5"], "axis must be 0, 1 or 2"),
        (["demo", "--steps", "1"], "num_timesteps must be an integer in [2, 1000]"),
        (["data", "transform", "/no/corpus", "--out", "x", "--teacher", "local:/no/model"], "is not a built corpus"),
    ],
)
def test_inputs_and_outputs_are_checked_before_a_model_loads(argv: list[str], message: str, monkeypatch, capsys,
                                                              mri_path: Path, tmp_path: Path) -> None:
    from unimedvl.cli.options import ModelChoice
    from unimedvl.inference.engine import UniMedVL

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(ModelChoice, "load", refuse)
    monkeypatch.setattr(UniMedVL, "from_pretrained", refuse)
    monkeypatch.chdir(tmp_path)
    from pydicom.data import get_testdata_file

    ct = get_testdata_file("CT_small.dcm")
    assert main([a.replace("{mri}", str(mri_path)).replace("{ct}", ct) for a in argv]) == 2
    assert message in capsys.readouterr().err


def test_the_command_table_and_the_readme_agree() -> None:
    """Every command of the table is shown in the README, and the README shows no command that does not exist."""
    import re

    from unimedvl.cli import COMMANDS, build_app

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    documented = set(re.findall(r"bin/unimedvl ((?:data |eval )?[a-z][a-z-]*)", readme))
    table = {" ".join(c.usage.split()[1:]) for c in COMMANDS}
    assert documented == table, f"only in the README: {sorted(documented - table)}; only in the table: {sorted(table - documented)}"
    assert {c.name for c in build_app().registered_commands} == {c.name for c in COMMANDS if c.group is None}


def test_edit_sizes_and_untrained_generation_sizes_are_said(checkpoint_copy: Path, mri_path: Path, tmp_path: Path,
                                                              capsys) -> None:  # noqa: ANN001
    (checkpoint_copy / "image_config.json").write_text(json.dumps(
        {"vae_max": 64, "vae_min": 32, "vit_max": 56, "vit_min": 28, "default_size": 32, "generation_sizes": [32, 64]}))
    common = ["-c", str(checkpoint_copy), "--steps", "2"]
    assert main(["edit", str(mri_path), "Sharpen.", "-o", str(tmp_path / "e.png"), "--height", "64", *common]) == 2
    assert "--height and --width" in capsys.readouterr().err
    assert main(["edit", str(mri_path), "Sharpen.", "-o", str(tmp_path / "e.png"), *common]) == 0
    said = capsys.readouterr().out
    assert Image.open(tmp_path / "e.png").size == (64, 64) and "input was sized to the model's trained sizes" in said
    assert main(["generate", "A chest X-ray.", "-o", str(tmp_path / "g.png"), "--height", "48", "--width", "48",
                 *common]) == 0
    assert "warning: 48x48: this checkpoint was trained to generate at sides 32, 64 px only" in capsys.readouterr().err


def test_a_full_disk_is_one_line_and_the_old_file_survives(tmp_path: Path, capsys, monkeypatch,
                                                          fixture_dir: Path) -> None:
    """Issue 13, item 10: ENOSPC was a traceback. Fault injected where a full disk fails: the flush to disk."""
    import errno
    import os

    import unimedvl.utils.files as files

    out = tmp_path / "old.png"
    out.write_bytes(b"the previous image")

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full_disk)
    code = main(["generate", "a chest x-ray", "--out", str(out), "--steps", "2", "--height", "32", "--width", "32",
                 "--checkpoint", str(fixture_dir)])
    err = capsys.readouterr().err
    assert code == 1 and "No space left on device" in err and "Traceback" not in err
    assert out.read_bytes() == b"the previous image"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.png"]  # no temporary file left behind
