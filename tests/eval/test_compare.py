"""`unimedvl eval compare`: side-by-side tables read from finished runs' results.json, never typed by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
from eval_helpers import LooksAtTheImage, TextOnly, table_row, write_bright_dark_set

from unimedvl.cli import main
from unimedvl.errors import InputError
from unimedvl.eval.compare import load_run
from unimedvl.eval.runner import run_benchmark


def test_two_models_side_by_side_with_their_checks_and_phrasings(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    benchmark = write_bright_dark_set(tmp_path / "set")
    looks = run_benchmark(benchmark, benchmark.bundled, LooksAtTheImage(), tmp_path / "looks" / "bright")
    blind = run_benchmark(benchmark, benchmark.bundled, TextOnly(), tmp_path / "blind" / "bright")
    assert main(["eval", "compare", f"v1={tmp_path / 'blind'}", f"v2={tmp_path / 'looks'}",
                 "--out", str(tmp_path / "tables.md")]) == 0
    text = capsys.readouterr().out
    assert (tmp_path / "tables.md").read_text() == text
    summary = text.split("Accuracy per phrasing")[0]
    v1, v2 = table_row(summary, "bright", "v1"), table_row(summary, "bright", "v2")
    low, high = looks["accuracy_interval"]
    assert v2[3] == f"100.0 ({100 * low:.1f}-100.0)" and looks["accuracy"] == 1.0 and low < 1.0
    assert v1[3].startswith(f"{100 * blind['accuracy']:.1f} (")
    # "always yes" is right where the guesser ("no") is wrong and the other way round: not above it; reading the image is
    p_above = {run: float(cells[4].split("(p ")[1].rstrip(")")) for run, cells in (("v1", v1), ("v2", v2))}
    assert v1[4].startswith("50.0 (p ") and p_above["v1"] > 0.5 and p_above["v2"] < 0.05
    assert v2[5].endswith("(pass)") and v1[5].endswith("(FAIL)")  # image dependence
    agreement = blind["checks"]["phrasing"]["agreement"]
    assert v1[6] == f"{100 * agreement:.1f}% of 12 (FAIL)" and v2[6] == "100.0% of 12 (pass)"
    per = blind["checks"]["phrasing"]["accuracy_per_phrasing"]
    phrasing = table_row(text.split("Accuracy per phrasing")[1], "bright", "v1")
    assert phrasing[2:6] == [f"{100 * per[k]:.1f}" for k in ("original", "paraphrase 1", "paraphrase 2", "flipped")]
    assert text.index("| bright | v1 |") < text.index("| bright | v2 |")  # runs in the order given


def test_folders_without_finished_results_are_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a folder"):
        load_run("v1", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no results.json"):
        load_run("v1", tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("{not json")
    with pytest.raises(InputError, match="not a readable results.json"):
        load_run("v1", tmp_path / "bad")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.json").write_text('{"n": 3}')
    with pytest.raises(InputError, match="not the results of"):
        load_run("v1", tmp_path / "other")
    assert main(["eval", "compare", f"v1={tmp_path / 'empty'}"]) == 2
