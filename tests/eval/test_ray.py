"""Answering on two local Ray workers (one loaded model each) gives the results of one process."""

from __future__ import annotations

from pathlib import Path

from eval_helpers import write_bright_dark_set

from unimedvl.eval.predictors import EnginePredictor
from unimedvl.eval.ray_runner import EngineFactory, RayPredictor
from unimedvl.eval.runner import RunOptions, run_benchmark
from unimedvl.inference.engine import UniMedVL


def test_two_ray_workers_match_one_process(tmp_path: Path, fixture_dir: Path) -> None:
    benchmark = write_bright_dark_set(tmp_path / "set", n=8)
    model = {"name": "reference-tiny"}
    options = RunOptions(checks=("image_dependence",), max_new_tokens=4)
    local = run_benchmark(benchmark, benchmark.bundled, EnginePredictor(UniMedVL.from_pretrained(fixture_dir), "x"),
                          tmp_path / "local", options=options, model=model)
    on_ray = run_benchmark(benchmark, benchmark.bundled, RayPredictor(EngineFactory(str(fixture_dir)), 2, "x"),
                           tmp_path / "ray", options=RunOptions(checks=("image_dependence",), max_new_tokens=4,
                                                                batch_size=10**9), model=model)
    assert (tmp_path / "local" / "predictions.jsonl").read_text().splitlines() == \
        (tmp_path / "ray" / "predictions.jsonl").read_text().splitlines()
    assert on_ray == local
