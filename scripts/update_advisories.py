"""Refresh security/advisories.json from a checkout of the PyPA advisory database (github.com/pypa/advisory-database).

    git clone https://github.com/pypa/advisory-database /tmp/advisory-database
    .venv/bin/python scripts/update_advisories.py /tmp/advisory-database

Keeps the advisories of every distribution installed in this environment (the project with its test
extras), reduced to what the offline check needs: id, aliases, summary and the affected ranges.
The database is CC BY 4.0 (security/README.md). No network is used: the checkout is read from disk.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "security" / "advisories.json"


def normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("database", type=Path, help="a checkout of pypa/advisory-database")
    args = parser.parse_args()
    vulns = args.database / "vulns"
    if not vulns.is_dir():
        print(f"error: {vulns} not found; give the root of an advisory-database checkout", file=sys.stderr)
        return 2
    installed = {normalise(d.metadata["Name"]) for d in metadata.distributions()}
    folders = {normalise(p.name): p for p in vulns.iterdir() if p.is_dir()}
    advisories = []
    for name in sorted(installed & set(folders)):
        for path in sorted(folders[name].glob("*.yaml")):
            entry = yaml.safe_load(path.read_text(encoding="utf-8"))
            affected = [{"ranges": [r for r in a.get("ranges", []) if r.get("type") == "ECOSYSTEM"],
                         "versions": a.get("versions", [])}
                        for a in entry.get("affected", []) if normalise(a["package"]["name"]) == name]
            advisories.append({"id": entry["id"], "package": name, "aliases": entry.get("aliases", []),
                               "summary": " ".join(str(entry.get("summary") or entry.get("details", "")).split())[:200],
                               "withdrawn": entry.get("withdrawn"), "affected": affected})
    try:
        commit = subprocess.run(["git", "-C", str(args.database), "log", "-1", "--format=%H %cI"], check=True,
                                capture_output=True, text=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        commit = ["unknown", "unknown"]
    data = {"source": "https://github.com/pypa/advisory-database (CC BY 4.0)", "commit": commit[0],
            "snapshot_date": commit[1][:10], "packages_covered": sorted(installed & set(folders)),
            "advisories": advisories}
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    tmp.replace(OUT)
    print(f"wrote {len(advisories)} advisories for {len(data['packages_covered'])} installed packages -> {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
