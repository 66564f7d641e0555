#!/usr/bin/env bash
# The main job: set up the environment, then train and evaluate an S4 design-space adapter on a GLUE task.
#
# Usage: bash scripts/main_job.sh [GLUE_DIR] [extra train_glue.py options...]
#   e.g. bash scripts/main_job.sh ../shared/data/glue/CoLA --preset lora;  bash scripts/main_job.sh --max_steps 100
#   GLUE_DIR defaults to ../shared/data/glue/SST-2 (relative to the repository root); a given path is taken relative
#   to the current directory. Outputs go to <repo>/outputs/designspace-<task>/ unless --output_dir is given.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [ $# -ge 1 ] && [ "${1#-}" = "$1" ]; then
    DATA_DIR="$1"
    shift
else
    DATA_DIR="$ROOT/../shared/data/glue/SST-2"
fi
if [ ! -d "$DATA_DIR" ]; then
    echo "main_job.sh: GLUE folder '$DATA_DIR' not found; expected a folder with train.tsv and dev.tsv" \
        "(e.g. ../shared/data/glue/SST-2)" >&2
    exit 2
fi
DATA_DIR="$(cd "$DATA_DIR" && pwd)"

bash "$ROOT/scripts/setup_env.sh"

cd "$ROOT"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
exec "$ROOT/.venv/bin/python" examples/designspace/train_glue.py --data_dir "$DATA_DIR" "$@"
