#!/usr/bin/env bash
# Set up the environment, then run the test suite. Extra arguments go to pytest, e.g.
#   bash scripts/test.sh -m "not slow"      bash scripts/test.sh tests/test_config.py -x
# Exits with pytest's exit code (5 when no test was collected).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

bash "$ROOT/scripts/setup_env.sh"

cd "$ROOT"
# the whole suite unless a test path is given (`tests` before a file would collect every test as well)
target=tests
for arg in "$@"; do
    case "$arg" in
        tests|tests/*|./tests*) target= ;;
    esac
done
exec "$ROOT/.venv/bin/python" -m pytest -q -p no:cacheprovider $target "$@"
