"""reference_check reads sizes, prompts and settings from the folder: another fixture passes too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixture_writer import Variant, write_fixture

from unimedvl.tools.reference_check import main


@pytest.fixture(scope="module")
def variant_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("variant") / "fixture"
    write_fixture(out, Variant())
    return out


def test_another_size_seed_and_prompts_pass(variant_dir: Path, capsys) -> None:
    assert main([str(variant_dir)]) == 0
    out = capsys.readouterr().out
    assert " 0 failed" in out and "case_d   step2.v " in out and "case_c   cfg_img_context" in out


def test_a_changed_prompt_fails(variant_dir: Path, tmp_path: Path, capsys) -> None:
    import shutil

    copy = tmp_path / "changed"
    shutil.copytree(variant_dir, copy)
    meta = json.loads((copy / "fixture.json").read_text())
    meta["cases"]["case_b"]["prompt"] = "Coronal MRI of the knee."
    meta["cases"]["case_b"]["prompt_ids"] = None
    (copy / "fixture.json").write_text(json.dumps(meta))
    assert main([str(copy)]) == 1
    out = capsys.readouterr().out
    assert "case_b   velocity" in out and "FAIL" in out
