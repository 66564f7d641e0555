#!/usr/bin/env bash
# Set up the environment, then run the test suite. Extra arguments go to pytest, e.g.
#   bash scripts/test.sh -m "not slow"      bash scripts/test.sh tests/test_config.py -x
# Exits with pytest's exit code (5 when no test was collected).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

bash "$ROOT/scripts/setup_env.sh"

cd "$ROOT"
# no path: pyproject.toml's testpaths (the whole suite); given paths replace it
exec "$ROOT/.venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
