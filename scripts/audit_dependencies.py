"""Offline dependency audit: every distribution installed in this environment against security/advisories.json.

    .venv/bin/python scripts/audit_dependencies.py [--json report.json]

An offline stand-in for `pip-audit`, which needs a live vulnerability service (this project's machines
and many hospital networks reach none). The advisories are a snapshot of the PyPA advisory database,
refreshed with scripts/update_advisories.py; anything published after its date is not covered, and the
report says so. Exit status 1 when an installed version is affected, 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata
from pathlib import Path

from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parents[1]
ADVISORIES = ROOT / "security" / "advisories.json"


def normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _in_range(version: Version, events: list[dict[str, str]]) -> bool:
    """OSV ECOSYSTEM semantics: introduced opens an affected span; fixed (exclusive) or last_affected closes it."""
    affected = False
    for event in sorted(events, key=lambda e: Version("0") if list(e.values())[0] == "0" else _v(list(e.values())[0])):
        kind, bound = next(iter(event.items()))
        bound_version = Version("0") if bound == "0" else _v(bound)
        if kind == "introduced" and version >= bound_version:
            affected = True
        elif kind == "fixed" and version >= bound_version:
            affected = False
        elif kind == "last_affected" and version > bound_version:
            affected = False
    return affected


def _v(text: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion:
        return Version("0")


def affects(advisory: dict, version: str) -> bool:
    if advisory.get("withdrawn"):
        return False
    try:
        parsed = Version(version)
    except InvalidVersion:
        return False
    for entry in advisory["affected"]:
        if version in entry.get("versions", []):
            return True
        if any(_in_range(parsed, r.get("events", [])) for r in entry.get("ranges", [])):
            return True
    return False


def audit(installed: dict[str, str], data: dict) -> list[dict[str, str]]:
    findings = []
    for advisory in data["advisories"]:
        version = installed.get(advisory["package"])
        if version is not None and affects(advisory, version):
            findings.append({"package": advisory["package"], "version": version, "id": advisory["id"],
                             "aliases": ", ".join(advisory.get("aliases", [])), "summary": advisory["summary"]})
    return findings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the report as JSON")
    parser.add_argument("--advisories", type=Path, default=ADVISORIES)
    args = parser.parse_args(argv)
    data = json.loads(args.advisories.read_text(encoding="utf-8"))
    installed = {normalise(d.metadata["Name"]): d.version for d in metadata.distributions()}
    findings = audit(installed, data)
    covered = [p for p in data["packages_covered"] if p in installed]
    print(f"dependency audit: {len(installed)} installed distributions, {len(covered)} with advisories on file "
          f"({len(data['advisories'])} advisories, PyPA advisory database as of {data['snapshot_date']}; "
          "later advisories are not covered)")
    for f in findings:
        print(f"  AFFECTED {f['package']}=={f['version']}: {f['id']} ({f['aliases']}) {f['summary']}")
    print("  no installed version is affected" if not findings else f"  {len(findings)} affected")
    if args.json:
        args.json.write_text(json.dumps({"snapshot_date": data["snapshot_date"], "installed": installed,
                                         "findings": findings}, indent=1) + "\n", encoding="utf-8")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
