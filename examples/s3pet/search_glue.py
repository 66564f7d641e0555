"""S3PET end to end on a GLUE task, offline: search a structure, retrain it from scratch, evaluate on dev.

1. **Search** on the packaged MiniLM-L6 backbone: every candidate of the search space (`--space`, default S3PET-M)
   is inserted with a gate; `S3PETSearchTrainer` updates gates (on half of the training rows, split with
   `--search_seed`) and deltas (on the other half) for `--search_steps`, evaluating on a validation split carved from
   train every `--eval_steps`; the structure is read from the best checkpoint (greedy by keep probability, or
   `--strategy knapsack`) and written with its heatmap to `<output_dir>/search/`.
2. **Retrain** the structure from scratch (apply mode, ordinary `Trainer`) on all training rows for
   `--retrain_steps`; with `--random_baseline`, also a random structure of the same budget.
3. **Evaluate** on the official dev split; everything is written to `<output_dir>/results.json`.

Usage (from the repository root, after `bash scripts/setup_env.sh`):

    .venv/bin/python examples/s3pet/search_glue.py --data_dir ../shared/data/glue/SST-2

The whole run is written to a hidden temporary folder renamed to `--output_dir` when complete: an existing non-empty
`--output_dir` is refused unless `--overwrite` is given (and even then only a previous output of the pack is
replaced), so no file of an earlier run is left mixed with new results.

Exit status: 0 on success, 1 when the run fails, 2 on bad options, unreadable data or a `--budget` the search space of
the model cannot meet (all checked before any model weights load).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
logger = logging.getLogger("s3pet_search_glue")
# split_validation keeps a validation row, and the search splits the rest into its gate and weight streams
MIN_TRAIN_ROWS = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--data_dir", required=True, help="GLUE folder with train.tsv and dev.tsv (SST-2, RTE, CoLA).")
    parser.add_argument("--task", default=None, help="SST-2, RTE or CoLA; inferred from --data_dir's name if unset.")
    parser.add_argument("--model_name_or_path", default=None, help="Local model folder (unset: packaged MiniLM).")
    parser.add_argument("--budget", type=float, default=5e-4, help="Fraction (< 1) of the backbone, or a count.")
    parser.add_argument("--space", default="m", help="Search space: m (S3PET-M) or l (S3PET-L).")
    parser.add_argument("--strategy", default="greedy", help="Discretisation: greedy or knapsack.")
    parser.add_argument("--search_steps", type=int, default=150, help="Search optimizer steps.")
    parser.add_argument("--retrain_steps", type=int, default=300, help="Retraining optimizer steps.")
    parser.add_argument("--eval_steps", type=int, default=50, help="Validation (and checkpoint) interval in search.")
    parser.add_argument("--max_train_samples", type=int, default=4000, help="Random subset of train rows.")
    parser.add_argument("--max_eval_samples", type=int, default=None, help="First N dev rows (all if unset).")
    parser.add_argument("--batch_size", type=int, default=32, help="Batch size.")
    parser.add_argument("--learning_rate", type=float, default=3e-3, help="Delta-weight learning rate.")
    parser.add_argument("--arch_learning_rate", type=float, default=0.1, help="Gate (α) learning rate.")
    parser.add_argument("--max_length", type=int, default=64, help="Truncation length in tokens.")
    parser.add_argument("--search_seed", type=int, default=1234, help="Seed of the search/weight split.")
    parser.add_argument("--seed", type=int, default=42, help="Run seed.")
    parser.add_argument("--random_baseline", action="store_true", help="Also retrain a random structure.")
    parser.add_argument("--num_threads", type=int, default=None, help="torch CPU threads (unset: torch's choice).")
    parser.add_argument("--output_dir", default="outputs/s3pet", help="Where outputs go.")
    parser.add_argument(
        "--overwrite", action="store_true", help="Replace the output folder of a previous run (once complete)."
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.rows = validate_args(parser, args)
    return args


def validate_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """Check every option and read the data before any model loads (`parser.error`: exit 2 naming the option).

    Returns the data rows, `{"train": [...], "dev": [...]}`."""
    from trainer_ext.glue_train import (
        budget_problem,
        check_example_paths,
        count_problem,
        learning_rate_problem,
        load_glue_data,
        max_length_problem,
        seed_problem,
    )

    checks = {
        "budget": budget_problem(args.budget),
        "learning_rate": learning_rate_problem(args.learning_rate),
        "arch_learning_rate": learning_rate_problem(args.arch_learning_rate),
        "max_length": max_length_problem(args.max_length),
        **{n: count_problem(getattr(args, n), optional=True) for n in ("max_eval_samples", "num_threads")},
        **{n: count_problem(getattr(args, n)) for n in ("search_steps", "retrain_steps", "eval_steps")},
        **{n: count_problem(getattr(args, n)) for n in ("max_train_samples", "batch_size")},
        **{n: seed_problem(getattr(args, n)) for n in ("seed", "search_seed")},
    }
    for name, problem in checks.items():
        if problem:
            parser.error(f"--{name} {problem}")
    if args.space not in ("m", "l"):
        parser.error(f"--space must be 'm' or 'l', got {args.space!r}.")
    if args.strategy not in ("greedy", "knapsack"):
        parser.error(f"--strategy must be 'greedy' or 'knapsack', got {args.strategy!r}.")
    if args.max_train_samples < MIN_TRAIN_ROWS:
        parser.error(
            f"--max_train_samples must be >= {MIN_TRAIN_ROWS} (a validation row and a row for each of the search's "
            f"two streams), got {args.max_train_samples}."
        )
    check_example_paths(parser, args)
    try:
        data = load_glue_data(args.data_dir, args.task)
    except (ValueError, FileNotFoundError) as err:
        parser.error(f"--data_dir {err}")
    if len(data["train"]) < MIN_TRAIN_ROWS:
        parser.error(f"--data_dir has {len(data['train'])} training rows; the search needs at least {MIN_TRAIN_ROWS}.")
    return data


def search_config(args: argparse.Namespace):
    """The `S3PETConfig` of the search."""
    from peft_designspace import S3PETConfig

    budget = int(args.budget) if args.budget >= 1 else args.budget
    return S3PETConfig(budget=budget, search_space=args.space, task_type="SEQ_CLS")


def budget_problem_on_model(args: argparse.Namespace) -> str | None:
    """Why the adapter cannot be set up on the model (e.g. `--budget` below the smallest feasible design), as a
    message naming the option, or None (`trainer_ext.glue_train.adapter_problem_on_meta_model`: no weights read)."""
    from trainer_ext.glue_train import adapter_problem_on_meta_model

    return adapter_problem_on_meta_model(args.model_name_or_path, search_config(args), args.budget)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = parse_args(argv)
    problem = budget_problem_on_model(args)  # needs the model's architecture: checked here, before its weights load
    if problem:
        build_parser().error(problem)
    from adapters_hub._files import atomic_output_dir

    protect = [args.data_dir, args.model_name_or_path]
    with atomic_output_dir(args.output_dir, overwrite=args.overwrite, only_pack_outputs=True, protect=protect) as tmp:
        return run(args, str(tmp))


def final_path(value, out_dir: str, output_dir: str):
    """A path inside the temporary `out_dir` as it will be once renamed to `output_dir`; other values unchanged."""
    if isinstance(value, str) and os.path.commonpath([os.path.abspath(value), out_dir]) == out_dir:
        return os.path.join(output_dir, os.path.relpath(os.path.abspath(value), out_dir))
    return value


def run(args: argparse.Namespace, out_dir: str) -> int:
    """The search, retraining and evaluation of `main`, writing everything into `out_dir`."""
    import torch
    from peft import get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from peft_designspace import S3PETConfig
    from trainer_ext import S3PETSearchTrainer, glue_metric, split_validation, tokenize_glue
    from trainer_ext.callbacks import write_json_atomic

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    start = time.perf_counter()
    data, task = args.rows, args.task
    rows = data["train"]
    if args.max_train_samples < len(rows):
        rows = random.Random(args.seed).sample(rows, args.max_train_samples)
    train_rows, valid_rows = split_validation(rows, fraction=0.1, seed=args.seed)
    dev_rows = data["dev"][: args.max_eval_samples] if args.max_eval_samples else data["dev"]
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    train_ds, valid_ds, dev_ds = (
        tokenize_glue(r, tokenizer, args.max_length) for r in (train_rows, valid_rows, dev_rows)
    )
    collator = DataCollatorWithPadding(tokenizer)
    metric = glue_metric(task)
    metric_name = "matthews_correlation" if "CoLA" in task else "accuracy"

    def training_args(folder: str, steps: int, **extra) -> TrainingArguments:
        return TrainingArguments(
            output_dir=os.path.join(out_dir, folder),
            max_steps=steps,
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=2 * args.batch_size,
            learning_rate=args.learning_rate,
            lr_scheduler_type="linear",
            warmup_steps=0,
            max_grad_norm=2.0,
            weight_decay=0.0,
            logging_steps=25,
            report_to="none",
            seed=args.seed,
            dataloader_pin_memory=False,
            **extra,
        )

    def base():
        return AutoModelForSequenceClassification.from_pretrained(args.model_name_or_path, num_labels=2)

    set_seed(args.seed)
    search_model = get_peft_model(base(), search_config(args))
    candidates = search_model.base_model.candidates()
    logger.info(
        "Search space %s: %d candidates, %d parameters; budget %d",
        args.space,
        len(candidates),
        sum(c.size for c in candidates),
        search_model.base_model.search_budget(),
    )
    search_args = training_args(
        "search",
        args.search_steps,
        eval_strategy="steps",
        eval_steps=args.eval_steps,
        save_strategy="steps",
        save_steps=args.eval_steps,
        metric_for_best_model=metric_name,
        greater_is_better=True,
        save_total_limit=2,
    )
    trainer = S3PETSearchTrainer(
        model=search_model,
        args=search_args,
        train_dataset=train_ds,
        eval_dataset=valid_ds,
        data_collator=collator,
        compute_metrics=metric,
        search_seed=args.search_seed,
        arch_learning_rate=args.arch_learning_rate,
        structure_strategy=args.strategy,
    )
    search_start = time.perf_counter()
    trainer.train()
    search_seconds = time.perf_counter() - search_start
    structure = trainer.derive_structure()
    logger.info(
        "Structure: %d modules, %d of %d parameters (α of %s)",
        len(structure["modules"]),
        structure["total"],
        structure["budget"],
        f"the evaluation at step {structure['from_step']}" if structure["from_step"] is not None else "the last step",
    )

    results = {
        "task": task,
        "budget": structure["budget"],
        "space": args.space,
        "strategy": args.strategy,
        "search_steps": args.search_steps,
        "retrain_steps": args.retrain_steps,
        "search_seconds": search_seconds,
        "structure": {k: final_path(v, out_dir, args.output_dir) for k, v in structure.items() if k != "modules"},
        "runs": {},
    }
    structures = {"searched": structure}
    if args.random_baseline:
        structures["random"] = search_model.base_model.random_structure(seed=args.seed, budget=structure["budget"])
    for name, chosen in structures.items():
        set_seed(args.seed)
        model = get_peft_model(base(), S3PETConfig(structure=chosen, task_type="SEQ_CLS"))
        retrain = Trainer(
            model=model,
            args=training_args(f"retrain-{name}", args.retrain_steps, save_strategy="no"),
            train_dataset=tokenize_glue(rows, tokenizer, args.max_length),
            data_collator=collator,
            compute_metrics=metric,
        )
        retrain_start = time.perf_counter()
        retrain.train()
        dev = retrain.evaluate(eval_dataset=dev_ds, metric_key_prefix="dev")
        model.save_pretrained(os.path.join(out_dir, f"adapter-{name}"))
        results["runs"][name] = {
            "modules": len(chosen["modules"]),
            "parameters": chosen["total"],
            "dev": dev,
            "train_seconds": time.perf_counter() - retrain_start,
        }
        print(
            f"SUMMARY structure={name} dev_{metric_name}={dev[f'dev_{metric_name}']:.4f} "
            f"parameters={chosen['total']:,} modules={len(chosen['modules'])}",
            flush=True,
        )
    results["wall_seconds"] = time.perf_counter() - start
    write_json_atomic(results, os.path.join(out_dir, "results.json"))
    print(json.dumps({k: v for k, v in results.items() if k != "structure"}, indent=1)[:2000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
