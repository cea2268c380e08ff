#!/usr/bin/env bash
# Create .venv in the project root and install unimedvl with its pinned dependencies (and pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]' > .venv/pip-install.log 2>&1; then
  grep -v "^WARNING: Location .* is ignored" .venv/pip-install.log >&2
  echo "setup failed: pip install did not succeed (full log: .venv/pip-install.log)" >&2
  exit 1
fi
.venv/bin/python -c "import unimedvl, torch; print(f'unimedvl {unimedvl.__version__} ready (torch {torch.__version__})')"
