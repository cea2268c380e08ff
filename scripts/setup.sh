#!/usr/bin/env bash
# Create .venv in the project root and install unimedvl with its pinned dependencies (and pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# The venv's own pip (23.2 on Python 3.11.7) has a published advisory (CVE-2023-5752): replace it first.
if ! { .venv/bin/python -m pip install --quiet --disable-pip-version-check pip==26.1.2 \
       && .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'; } > .venv/pip-install.log 2>&1; then
  grep -v "^WARNING: Location .* is ignored" .venv/pip-install.log >&2
  echo "setup failed: pip install did not succeed (full log: .venv/pip-install.log)" >&2
  exit 1
fi
# The web page's browser test (tests/serve/test_page.py) drives Debian's Chromium and ChromeDriver.
if ! { command -v chromium && command -v chromedriver; } >/dev/null && command -v apt-get >/dev/null \
   && [ "$(id -u)" = 0 ]; then
  { apt-get install -y -q chromium chromium-driver || { apt-get update -q && apt-get install -y -q chromium chromium-driver; }; } \
    > .venv/apt-install.log 2>&1 || echo "note: chromium could not be installed (see .venv/apt-install.log); the browser test will fail" >&2
fi
.venv/bin/python -c "import unimedvl, torch; print(f'unimedvl {unimedvl.__version__} ready (torch {torch.__version__})')"
