#!/usr/bin/env bash
# The main job: set up the environment, then train and evaluate an S4 design-space adapter on a GLUE task with the
# `peft-designspace train` command (see docs/cli.md).
#
# Usage: bash scripts/main_job.sh [GLUE_DIR] [extra `peft-designspace train` options...]
#   e.g. bash scripts/main_job.sh ../shared/data/glue/CoLA --preset lora;  bash scripts/main_job.sh --method sam
#   GLUE_DIR defaults to ../shared/data/glue/SST-2 (relative to the repository root); a given path is taken relative
#   to the current directory. Outputs go to <repo>/outputs/<method>-<task>/ unless --output_dir is given; a previous
#   run's outputs there are replaced once the new run is complete.
# Exit status: 0 success, 1 failed run (e.g. the reloaded adapter differs), 2 bad options (before any model loads).
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
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"  # backbone and data are local
if [ -x "$ROOT/.venv/bin/peft-designspace" ]; then
    CLI=("$ROOT/.venv/bin/peft-designspace")
else  # the console script appears with the next `pip install -e .`; the module is the same program
    CLI=("$ROOT/.venv/bin/python" -m adapters_hub.cli)
fi
exec "${CLI[@]}" train --data "$DATA_DIR" --overwrite "$@"
