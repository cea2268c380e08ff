"""The layout holds: imports only run downwards, the corpus pipeline stays torch-free, the root is the public API."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import unimedvl

PACKAGE = Path(unimedvl.__file__).parent
# A package may import itself and packages of a lower layer, never one of its own layer or above
# (docs/architecture.md draws the same table).
LAYERS = {
    "errors": 0, "assets": 0,
    "utils": 1,
    "config": 2,
    "text": 3, "imaging": 3,
    "model": 4, "data": 4,
    "checkpoint": 5,
    "inference": 6, "train": 6,
    "eval": 7, "tools": 7, "serve": 7,
    "cli": 8,
}
ROOT_MODULES = {"__init__.py", "__main__.py", "config.py", "errors.py"}


def _package_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every `unimedvl.*` import of a file, at module level or inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("unimedvl.") and not node.level:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("unimedvl.")]
    return found


def _source_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__main__.py" and p.relative_to(PACKAGE) != Path("__init__.py"))


def test_every_package_has_a_layer() -> None:
    packages = {_package_of(p) for p in _source_files()}
    assert packages <= set(LAYERS), f"packages without a layer: {sorted(packages - set(LAYERS))}"


def test_no_import_runs_upwards_or_sideways() -> None:
    bad = []
    for path in _source_files():
        mine = _package_of(path)
        for line, module in _imports(path):
            theirs = module.split(".")[1]
            if theirs != mine and LAYERS[theirs] >= LAYERS[mine]:
                bad.append(f"{path.relative_to(PACKAGE)}:{line} ({mine}, layer {LAYERS[mine]}) imports {module} "
                           f"({theirs}, layer {LAYERS[theirs]})")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("low, high", [("model", "data"), ("model", "train"), ("model", "eval"), ("model", "cli"),
                                       ("data", "inference"), ("data", "model"), ("inference", "train")])
def test_named_rules(low: str, high: str) -> None:
    """The issue's rules, spelled out: model never imports data, train, eval or cli; data never the engine."""
    offending = [f"{p.relative_to(PACKAGE)}:{line}" for p in _source_files() if _package_of(p) == low
                 for line, module in _imports(p) if module.split(".")[1] == high]
    assert not offending, offending


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    sample = tmp_path / "mod.py"
    sample.write_text("def f():\n    from unimedvl.train.trainer import Trainer\n")
    assert _imports(sample) == [(2, "unimedvl.train.trainer")]


def test_root_holds_only_the_public_api() -> None:
    assert {p.name for p in PACKAGE.glob("*.py")} == ROOT_MODULES
    for name in unimedvl.__all__:
        assert getattr(unimedvl, name) is not None


def test_the_corpus_pipeline_does_not_import_torch() -> None:
    code = ("import sys; import unimedvl.data.pipeline, unimedvl.data.distillation, unimedvl.data.qc.review; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
