"""The offline dependency audit (issue 13): OSV range rules, and the shipped snapshot against this environment."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("audit_dependencies", ROOT / "scripts" / "audit_dependencies.py")
audit_dependencies = importlib.util.module_from_spec(spec)
spec.loader.exec_module(audit_dependencies)  # type: ignore[union-attr]


def advisory(events: list[dict[str, str]], versions: tuple[str, ...] = (), withdrawn: str | None = None) -> dict:
    return {"id": "PYSEC-TEST", "package": "pkg", "aliases": ["CVE-0000-0000"], "summary": "test",
            "withdrawn": withdrawn, "affected": [{"ranges": [{"type": "ECOSYSTEM", "events": events}],
                                                  "versions": list(versions)}]}


@pytest.mark.parametrize(("events", "version", "affected"), [
    ([{"introduced": "0"}, {"fixed": "2.0"}], "1.9.9", True),
    ([{"introduced": "0"}, {"fixed": "2.0"}], "2.0", False),
    ([{"introduced": "1.5"}, {"fixed": "2.0"}], "1.4", False),
    ([{"introduced": "1.0"}, {"last_affected": "1.2"}], "1.2", True),
    ([{"introduced": "1.0"}, {"last_affected": "1.2"}], "1.2.1", False),
    ([{"introduced": "0"}, {"fixed": "1.0"}, {"introduced": "2.0"}, {"fixed": "2.1"}], "2.0.5", True),
    ([{"introduced": "0"}, {"fixed": "1.0"}, {"introduced": "2.0"}, {"fixed": "2.1"}], "1.5", False),
    ([{"introduced": "0"}], "99.0", True),
])
def test_osv_ranges(events, version: str, affected: bool) -> None:
    assert audit_dependencies.affects(advisory(events), version) is affected


def test_listed_versions_and_withdrawn_advisories() -> None:
    assert audit_dependencies.affects(advisory([], versions=("1.3",)), "1.3")
    assert not audit_dependencies.affects(advisory([{"introduced": "0"}], withdrawn="2024-01-01"), "1.0")


def test_the_snapshot_finds_a_known_advisory_and_this_environment_is_clean(tmp_path: Path) -> None:
    data = json.loads((ROOT / "security" / "advisories.json").read_text())
    assert {"torch", "pillow", "numpy", "pip"} <= set(data["packages_covered"])
    # torch.load with weights_only=True could still run code before 2.6.0 (CVE-2025-32434 is newer than the
    # snapshot; CVE-2022-45907 is in it): an old torch must be reported.
    old = audit_dependencies.audit({"torch": "1.13.0", "pip": "23.2.1"}, data)
    assert {f["id"] for f in old if f["package"] == "torch"} and any(f["package"] == "pip" for f in old)
    report = tmp_path / "report.json"
    assert audit_dependencies.main(["--json", str(report)]) == 0
    assert json.loads(report.read_text())["findings"] == []
