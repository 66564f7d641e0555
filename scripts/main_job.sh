#!/usr/bin/env bash
# The main job: set up the environment, then train and evaluate an S4 design-space adapter on a GLUE task with the
# `peft-designspace train` command (see docs/cli.md).
#
# Usage: bash scripts/main_job.sh [GLUE_DIR] [extra `peft-designspace train` options...]
#   e.g. bash scripts/main_job.sh ../shared/data/glue/CoLA --preset lora;  bash scripts/main_job.sh --method sam
#   GLUE_DIR (or a --data option instead of it) defaults to ../shared/data/glue/SST-2 (relative to the repository
#   root); a given path is taken relative
#   to the current directory, and so are the paths given to --output_dir, --adapter, --data and --model. Outputs go
#   to <repo>/outputs/<method>[-<variant>]-<task>/ unless --output_dir is given (the variant names a preset other
#   than s4, or a SAM score/scope other than the default: outputs/sam-fisher-SST-2);
#   a previous run's outputs there are replaced once the new run is complete (`--overwrite`), but a folder that does
#   not hold a previous output of the pack (and the current directory, the repository, the data) is never replaced.
# Exit status: 0 success, 1 failed run (e.g. the reloaded adapter differs), 2 bad options (before any model loads).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

DATA_OPTION=""  # a --data option (or an abbreviation) takes the place of GLUE_DIR and its default
for arg in "$@"; do
    case "$arg" in --da*) DATA_OPTION="$arg" ;; esac
done
DATA_ARGS=()
if [ $# -ge 1 ] && [ "${1#-}" = "$1" ]; then
    if [ -n "$DATA_OPTION" ]; then
        echo "main_job.sh: give the GLUE folder once: as GLUE_DIR ('$1') or as $DATA_OPTION, not both" >&2
        exit 2
    fi
    DATA_DIR="$1"
    shift
elif [ -z "$DATA_OPTION" ]; then
    DATA_DIR="$ROOT/../shared/data/glue/SST-2"
fi
if [ -z "$DATA_OPTION" ]; then
    if [ ! -d "$DATA_DIR" ]; then
        echo "main_job.sh: GLUE folder '$DATA_DIR' not found; expected a folder with train.tsv and dev.tsv" \
            "(e.g. ../shared/data/glue/SST-2)" >&2
        exit 2
    fi
    DATA_ARGS=(--data "$(cd "$DATA_DIR" && pwd)")
fi

# Paths in the options are the caller's: make them absolute before `cd "$ROOT"` (a Hub model id stays as it is).
CALLER_DIR="$(pwd)"
absolute() {  # absolute <path> -> the path relative to the caller's directory, made absolute
    case "$1" in
        /*) printf '%s' "$1" ;;
        "~"*) printf '%s' "$1" ;;  # expanded by the command line (a shell leaves `--opt=~/x` as it is)
        *) printf '%s/%s' "$CALLER_DIR" "$1" ;;
    esac
}
ARGS=()
OUT_DIR=""
while [ $# -gt 0 ]; do
    case "$1" in
        --ou*=*)  # --output_dir (and the abbreviations argparse accepts)
            OUT_DIR="$(absolute "${1#*=}")"
            ARGS+=("${1%%=*}=$OUT_DIR") ;;
        --ad*=*)  # --adapter
            ARGS+=("${1%%=*}=$(absolute "${1#*=}")") ;;
        --da*=* | --mo*=*)  # --data/--data_dir, --model/--model_name_or_path: only when the path exists
            if [ -e "${1#*=}" ]; then ARGS+=("${1%%=*}=$(absolute "${1#*=}")"); else ARGS+=("$1"); fi ;;
        --ou*)
            ARGS+=("$1")
            if [ $# -ge 2 ]; then OUT_DIR="$(absolute "$2")"; ARGS+=("$OUT_DIR"); shift; fi ;;
        --ad*)
            ARGS+=("$1")
            if [ $# -ge 2 ]; then ARGS+=("$(absolute "$2")"); shift; fi ;;
        --da* | --mo*)
            ARGS+=("$1")
            if [ $# -ge 2 ]; then
                if [ -e "$2" ]; then ARGS+=("$(absolute "$2")"); else ARGS+=("$2"); fi
                shift
            fi ;;
        *)
            ARGS+=("$1") ;;
    esac
    shift
done

# The command line refuses its own current directory and its parents as output; after `cd "$ROOT"` that is the
# repository, so the caller's directory is checked here.
if [ -n "$OUT_DIR" ]; then
    OUT_REAL="$(realpath -m "$OUT_DIR")"
    case "$(pwd -P)/" in
        "${OUT_REAL%/}"/*)
            echo "error: --output_dir $OUT_DIR is the current directory or one of its parents; it is never used as an output folder, choose a new subfolder." >&2
            exit 2 ;;
    esac
fi

bash "$ROOT/scripts/setup_env.sh"

cd "$ROOT"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"  # backbone and data are local
if [ -x "$ROOT/.venv/bin/peft-designspace" ]; then
    CLI=("$ROOT/.venv/bin/peft-designspace")
else  # the console script appears with the next `pip install -e .`; the module is the same program
    CLI=("$ROOT/.venv/bin/python" -m adapters_hub.cli)
fi
exec "${CLI[@]}" train ${DATA_ARGS[@]+"${DATA_ARGS[@]}"} --overwrite ${ARGS[@]+"${ARGS[@]}"}
