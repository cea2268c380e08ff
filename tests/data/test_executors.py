"""The same build on local processes, one process, and Ray Data gives the same corpus."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from data_helpers import small_sources, write_config

from unimedvl.cli import main
from unimedvl.data.pipeline import BuildConfig, build_corpus


def test_ray_local_and_serial_builds_agree(tmp_path: Path) -> None:
    config_path = write_config(tmp_path, small_sources(limit=100), chunk_size=50)
    manifests = []
    for name, executor, workers in (("serial", "local", 1), ("pool", "local", 2), ("ray", "ray", 2)):
        config = replace(BuildConfig.from_yaml(config_path), executor=executor)
        manifests.append(build_corpus(config, tmp_path / name, workers=workers, log=lambda m: None))
    assert manifests[0] == manifests[1] == manifests[2]
    assert manifests[0].total > 100


def test_cli_data_build_and_errors(tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path, small_sources(limit=20))
    assert main(["data", "build", str(config), "--out", str(tmp_path / "c")]) == 0
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["total"] > 0
    assert main(["data", "build", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "d")]) == 2
    assert capsys.readouterr().err.strip().endswith("build config not found: " + str(tmp_path / "nope.yaml"))
    assert main(["data", "build", "--out", str(tmp_path / "e")]) == 2
    assert main(["data", "agreement", str(tmp_path / "c")]) == 0
