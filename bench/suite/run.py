"""Run the benchmark suite: every experiment × task, a learning-rate sweep, then more seeds at the best rate.

Usage (the documented CPU suite, ~3 h on 2 cores; re-running skips finished results, so it can be resumed):

```
python bench/suite/run.py --workers 2              # data from ../shared/data/glue (or --data-dir)
python bench/suite/run.py --tasks SST-2 --experiments "lora/*" "s4/*"
python bench/suite/run.py --backbone smollm2 --quantization 4bit --tasks SST-2 --experiments "lora/*" "sam-sam/*"
python bench/suite/run.py --dry-run                # the plan and its size, nothing trained
python bench/suite/report.py                       # regenerate docs/benchmarks.md from the results
```

Per (task, experiment): the sweep trains seed `seeds[0]` at `learning_rate_base × m` for every `m` in
`lr_multipliers` and picks the rate with the best final metric on the validation split (carved from train with
`validation_seed`; the GLUE dev split is never used for choosing). The other seeds then train at that rate. Every
run writes `results/<backbone>/<task>/<experiment>/lr=<lr>_seed=<seed>.json` with `run_info`, `train_info` and
`meta_info`; a file with status `ok` is not run again. A finished result made with other training params or another
resolved config (`plan.settings_of`) is refused rather than reused or replaced: the suite stops with exit status 2
and names the differing fields.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(ROOT)]

from backbones import BackboneError, load_classifier, resolve_backbone  # noqa: E402
from plan import (  # noqa: E402
    EXPERIMENTS_DIR,
    Experiment,
    ExperimentError,
    Resolved,
    load_defaults,
    load_experiments,
    resolve,
    settings_diff,
    settings_key,
    settings_of,
    task_params,
)

from trainer_ext.callbacks import write_json_atomic  # noqa: E402

RESULTS_DIR = HERE / "results"
DONE = ("ok", "skipped")
SKIPPED_FILE = "skipped.json"  # a (task, experiment) whose method cannot be built at its budget
SMOKE = {
    "max_steps": 4,
    "eval_every": 2,
    "max_train_samples": 96,
    "validation_samples": 32,
    "max_dev_samples": 32,
    "lr_multipliers": [1, 3],
    "seeds": [0, 1],
    "sam_calibration_batches": 2,
    "timing_warmup_steps": 1,
    "batch_size": 8,
    "search_steps": 4,
}
logger = logging.getLogger("bench.suite")


class UsageError(ValueError):
    """A bad option value, or results that conflict with the options; one line naming it, exit status 2."""


# --set values: a check and what it expects, per training param
Rule = tuple[Callable[[Any], bool], str]


def _whole(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


COUNT: Rule = (lambda v: _whole(v, 1), "an int >= 1")
SEED: Rule = (lambda v: _whole(v, 0), "an int >= 0")
OPTIONAL_COUNT: Rule = (lambda v: v is None or _whole(v, 1), "null or an int >= 1")
POSITIVE: Rule = (lambda v: _real(v) and v > 0, "a number > 0")
OVERRIDE_RULES: dict[str, Rule] = {
    **dict.fromkeys(
        ("max_steps", "batch_size", "eval_batch_size", "max_train_samples", "validation_samples", "eval_every"), COUNT
    ),
    **dict.fromkeys(("sam_calibration_batches", "search_steps"), COUNT),
    **dict.fromkeys(("validation_seed", "s3pet_search_seed", "structure_seed", "timing_warmup_steps"), SEED),
    **dict.fromkeys(("max_dev_samples", "num_threads"), OPTIONAL_COUNT),
    **dict.fromkeys(("learning_rate_base", "search_learning_rate", "max_grad_norm"), POSITIVE),
    "weight_decay": (lambda v: _real(v) and v >= 0, "a number >= 0"),
    "warmup_ratio": (lambda v: _real(v) and 0 <= v < 1, "a number in [0, 1)"),
    "lr_multipliers": (
        lambda v: isinstance(v, list) and bool(v) and all(POSITIVE[0](m) for m in v),
        "a non-empty list of numbers > 0, e.g. [1, 3, 10]",
    ),
    "seeds": (
        lambda v: isinstance(v, list) and bool(v) and all(_whole(s, 0) for s in v),
        "a non-empty list of ints >= 0, e.g. [0, 1, 2]",
    ),
    "max_length": (
        lambda v: _whole(v, 1) or (isinstance(v, dict) and all(_whole(n, 1) for n in v.values())),
        'an int >= 1, or an object of task -> int such as {"SST-2": 64}',
    ),
    "per_task": (
        lambda v: isinstance(v, dict) and all(isinstance(p, dict) for p in v.values()),
        'an object of task -> training params such as {"RTE": {"max_steps": 50}}',
    ),
    "default_tasks": (
        lambda v: isinstance(v, dict) and all(isinstance(t, list) for t in v.values()),
        'an object of device -> tasks such as {"cpu": ["SST-2"], "cuda": ["SST-2", "RTE"]}',
    ),
}


# results
def read_result(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def result_path(results_dir: Path, backbone: str, task: str, experiment: str, lr: float, seed: int) -> Path:
    return results_dir / backbone / task / experiment / f"lr={lr:.3g}_seed={seed}.json"


def check_same_settings(path: Path, run_info: dict, settings: dict) -> None:
    """Refuse a finished result at `path` made with other `settings` (`plan.settings_of`) than the current ones.

    Only the recorded fields are compared, so results written before this check existed count when they match.
    `settings["config"]` None compares the training params alone (the config is known once the backbone is loaded).
    """
    recorded = settings_of(run_info.get("training_params", {}), run_info.get("config"))
    if settings["config"] is None:
        recorded["config"] = None
    changes = settings_diff(recorded, settings)
    if changes:
        raise UsageError(
            f"{path} is a finished run made with other settings ({'; '.join(changes)}, as recorded → now). Pass "
            "another --results-dir, or delete that experiment's results to train it again with these settings."
        )


def check_cached_runs(folder: Path, params: dict) -> None:
    """Refuse `folder` (one task and experiment) when a finished run in it was trained with other `params`."""
    for path in sorted(folder.glob("lr=*.json")):
        result = read_result(path)
        if result is not None and result.get("run_info", {}).get("status") == "ok":
            check_same_settings(path, result["run_info"], settings_of(params, None))


def meta_info(device: str) -> dict:
    """Package versions, git revision, device and CPU: what a result depends on besides its settings."""
    import peft
    import torch
    import transformers

    import peft_designspace

    def git(*cmd: str) -> str | None:
        try:
            return subprocess.run(
                ["git", *cmd], cwd=ROOT, capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    cpu = platform.processor() or None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    versions.update({"peft": peft.__version__, "peft_designspace": peft_designspace.__version__})
    try:
        import bitsandbytes

        versions["bitsandbytes"] = bitsandbytes.__version__
    except Exception:  # not installed, or no usable backend
        versions["bitsandbytes"] = None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "package_versions": versions,
        "git_revision": git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "device": device,
        "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else cpu,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


# data
def task_rows(data_dir: Path, task: str, params: dict) -> dict[str, list[dict]]:
    """Train / validation / dev rows of `task`: validation carved from a seeded train sample, dev = GLUE dev."""
    from trainer_ext import load_glue_folder, split_validation
    from trainer_ext.glue import normalize_task

    folder = data_dir / normalize_task(task)
    if not (folder / "train.tsv").is_file() or not (folder / "dev.tsv").is_file():
        raise FileNotFoundError(
            f"No GLUE data for {task} in {folder} (expected train.tsv and dev.tsv). Pass --data-dir with the folder "
            "that holds SST-2/, RTE/ and CoLA/ (in this project: ../shared/data/glue)."
        )
    data = load_glue_folder(folder, task=task)
    rng = random.Random(params["validation_seed"])
    wanted = params["max_train_samples"] + params["validation_samples"]
    rows = rng.sample(data["train"], wanted) if wanted < len(data["train"]) else list(data["train"])
    fraction = params["validation_samples"] / len(rows)
    train, validation = split_validation(rows, fraction=min(max(fraction, 1e-9), 0.5), seed=params["validation_seed"])
    dev = data["dev"][: params["max_dev_samples"]] if params["max_dev_samples"] else data["dev"]
    return {"train": train, "validation": validation, "dev": dev}


def max_length(params: dict, task: str) -> int:
    value = params["max_length"]
    return value[task] if isinstance(value, dict) else int(value)


# S3PET structures
def s3pet_structure(
    experiment: Experiment, config: dict, backbone_dir: str, task: str, tokenized: dict, params: dict, cache: Path
) -> tuple[dict, dict]:
    """The structure an S3PET experiment retrains: searched once per (backbone, task, budget), or random."""
    from peft import get_peft_model
    from plan import build_config

    kind = experiment.overrides["s3pet_structure"]
    path = cache / f"{kind}-budget={config['budget']}.json"
    key = settings_key(settings_of(params, config))
    saved = read_result(path)
    if saved is not None and _structure_is_current(saved, kind, params, key):
        return saved["structure"], saved["info"]
    import torch

    torch.manual_seed(params["structure_seed"])
    base, tokenizer = load_classifier(backbone_dir)
    search_model = get_peft_model(base, build_config(config))
    start = time.perf_counter()
    if kind == "random":
        structure = search_model.base_model.random_structure(seed=params["structure_seed"], budget=config["budget"])
        info = {"kind": "random", "seed": params["structure_seed"]}
    else:
        from transformers import DataCollatorWithPadding, TrainingArguments

        from trainer_ext import S3PETSearchTrainer

        search = _structure_plan(kind, params)
        steps, lr = search["steps"], search["learning_rate"]
        with tempfile.TemporaryDirectory() as out:
            args = TrainingArguments(
                output_dir=out,
                max_steps=steps,
                per_device_train_batch_size=params["batch_size"],
                learning_rate=lr,
                lr_scheduler_type="linear",
                warmup_steps=params["warmup_ratio"],
                max_grad_norm=2.0,
                save_strategy="no",
                report_to="none",
                seed=params["s3pet_search_seed"],
                disable_tqdm=True,
                dataloader_pin_memory=False,
            )
            trainer = S3PETSearchTrainer(
                model=search_model,
                args=args,
                train_dataset=tokenized["train"],
                data_collator=DataCollatorWithPadding(tokenizer),
            )
            trainer.train()
            structure = trainer.derive_structure(from_best=False)
        info = _structure_plan(kind, params)
    info["seconds"] = time.perf_counter() - start
    info["kept"], info["params"] = len(structure["modules"]), structure["total"]
    write_json_atomic({"structure": structure, "info": info, "settings": key}, path)
    return structure, info


def _structure_plan(kind: str, params: dict) -> dict:
    """How the structure of `kind` is made with `params`: what its saved `info` records."""
    if kind == "random":
        return {"kind": "random", "seed": params["structure_seed"]}
    return {
        "kind": "search",
        "seed": params["s3pet_search_seed"],
        "steps": params.get("search_steps", 2 * params["max_steps"]),
        "learning_rate": params.get("search_learning_rate", params["learning_rate_base"] * 3),
    }


def _structure_is_current(saved: dict, kind: str, params: dict, key: str) -> bool:
    """Whether a saved structure was made with the current settings (else it is searched or drawn again)."""
    if "settings" in saved:
        return saved["settings"] == key
    info = saved.get("info", {})  # saved before settings were recorded: its own record of the search decides
    return all(info.get(k) == v for k, v in _structure_plan(kind, params).items())


# the suite
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--data-dir",
        default=str(ROOT.parent / "shared" / "data" / "glue"),
        help="folder holding the GLUE task folders (SST-2/, RTE/, CoLA/)",
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=None,
        help="GLUE tasks (default: `default_tasks` of default_training_params.json for the device: SST-2 on CPU, "
        "where RTE and CoLA give no signal within the time budget, all three on CUDA)",
    )
    parser.add_argument("--backbone", default="minilm", help="minilm, smollm2, or a local HF model folder")
    parser.add_argument("--experiments", nargs="*", default=None, help="glob patterns of experiment names (all)")
    parser.add_argument("--experiments-dir", default=str(EXPERIMENTS_DIR))
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--quantization", choices=("8bit", "4bit"), default=None, help="load the backbone with bitsandbytes"
    )
    parser.add_argument(
        "--set",
        nargs="*",
        action="extend",
        default=[],
        metavar="KEY=JSON",
        help="override default training params, e.g. --set max_steps=300 'seeds=[0,1,2,3]'",
    )
    parser.add_argument("--smoke", action="store_true", help="a few steps on tiny subsets (pipeline check)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes, each with its share of the cores")
    parser.add_argument("--shard", default="0/1", help=argparse.SUPPRESS)  # set by --workers for each process
    args = parser.parse_args(argv)
    try:
        index, count = (int(v) for v in args.shard.split("/"))
        if not 0 <= index < count:
            raise ValueError
    except ValueError:
        parser.error(f"--shard must be INDEX/COUNT with 0 <= INDEX < COUNT, got {args.shard!r}.")
    args.shard = (index, count)
    if args.workers < 1:
        parser.error(f"--workers must be a positive int, got {args.workers}.")
    args.overrides = dict(SMOKE) if args.smoke else {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set takes KEY=VALUE, got {item!r}.")
        try:
            args.overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            args.overrides[key] = value
    return args


def run_workers(args: argparse.Namespace, argv: list[str]) -> list[int]:
    """Run the suite as `args.workers` processes, each on every N-th (task, experiment) cell with its share of the
    cores (`num_threads`). Results land in the same folders, so workers never write the same file. The options are
    checked here first (`make_plan`), so a usage error is reported once. Returns the workers' exit codes."""
    make_plan(args)
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    procs = []
    for index in range(args.workers):
        command = [sys.executable, str(Path(__file__).resolve()), *argv, "--shard", f"{index}/{args.workers}"]
        command += ["--set", f"num_threads={threads}"]
        procs.append(subprocess.Popen(command))
    codes = [p.wait() for p in procs]
    print(f"Workers finished with exit codes {codes}.")
    return codes


def check_overrides(overrides: dict, defaults: dict) -> None:
    """Refuse a `--set` key the suite does not know, or a value of the wrong type or range (`OVERRIDE_RULES`)."""
    unknown = sorted(set(overrides) - set(defaults) - {"search_steps", "search_learning_rate"})
    if unknown:
        raise UsageError(f"--set: unknown training params {unknown}; known: {', '.join(sorted(defaults))}.")
    for key, value in overrides.items():
        check, expected = OVERRIDE_RULES.get(key, (lambda v: True, ""))
        if not check(value):
            raise UsageError(f"--set {key}={json.dumps(value)}: {key} must be {expected}.")


def check_device(device: str | None, dry_run: bool) -> str:
    """The torch device to train on: `device` (cpu, cuda or cuda:N) checked, else cuda when available.

    A dry run only plans, so it may name cuda on a machine without one.
    """
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind, sep, number = device.partition(":")
    if device != "cpu" and (kind != "cuda" or (sep and not number.isdigit())):
        raise UsageError(f"--device {device!r}: must be cpu, cuda or cuda:N.")
    if kind == "cuda" and not dry_run:
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device!r}: CUDA is not available on this machine; use --device cpu.")
        if number and int(number) >= torch.cuda.device_count():
            raise UsageError(f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s).")
    return device


def check_tasks(tasks: list[str]) -> list[str]:
    """The canonical names of `tasks` (`--tasks`), refusing one the suite has no data reader for."""
    from trainer_ext.glue import TASKS, normalize_task

    names = []
    for task in tasks:
        try:
            names.append(normalize_task(task))
        except ValueError:
            raise UsageError(f"--tasks {task!r}: not a task of the suite; use {', '.join(TASKS)}.") from None
    return names


@dataclass
class Plan:
    """What a suite invocation runs, checked before any model loads."""

    defaults: dict
    device: str
    tasks: list[str]
    experiments: list[Experiment]
    data_dir: Path
    backbone_name: str
    cells: list[tuple[str, Experiment]]  # every (task, experiment), all shards


def make_plan(args: argparse.Namespace) -> Plan:
    """Check every option against the defaults, the experiments and the results already written (no model loads).

    Raises:
        UsageError: for a bad option value, or a finished result made with other settings.
        ExperimentError, FileNotFoundError: for a malformed experiment folder or a missing --data-dir.
    """
    defaults = load_defaults()
    check_overrides(args.overrides, defaults)
    defaults.update(args.overrides)
    device = check_device(args.device, args.dry_run)
    default_tasks = defaults.pop("default_tasks")
    tasks = check_tasks(args.tasks or default_tasks["cuda" if device.startswith("cuda") else "cpu"])
    experiments = load_experiments(Path(args.experiments_dir), args.experiments)
    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"--data-dir {str(data_dir)!r} does not exist; it must hold the GLUE task folders SST-2/, RTE/, CoLA/ "
            "(in this project: ../shared/data/glue)."
        )
    backbone_name = args.backbone if args.backbone in ("minilm", "smollm2") else Path(args.backbone).name
    if args.quantization:
        backbone_name += f"-{args.quantization}"
    cells = [(t, e) for t in tasks for e in experiments]
    for task, experiment in cells:
        params = experiment.training_params(task_params(defaults, task))
        check_cached_runs(Path(args.results_dir) / backbone_name / task / experiment.name, params)
    return Plan(defaults, device, tasks, experiments, data_dir, backbone_name, cells)


def run_suite(args: argparse.Namespace) -> dict:
    """Run (or resume) the suite described by `args`; returns counts of runs by status."""
    import torch
    from tqdm.auto import tqdm

    from trainer_ext import tokenize_glue

    plan = make_plan(args)
    defaults, device = plan.defaults, plan.device
    index, count = args.shard
    cells = plan.cells[index::count]

    def runs_of(task: str, experiment: Experiment) -> int:
        params = experiment.training_params(task_params(defaults, task))
        return len(params["lr_multipliers"]) + len(params["seeds"]) - 1

    planned = sum(runs_of(t, e) for t, e in cells)
    shard = f" (shard {index + 1} of {count})" if count > 1 else ""
    print(
        f"Suite{shard}: backbone {args.backbone}, tasks {', '.join(plan.tasks)}, {len(plan.experiments)} experiments, "
        f"{planned} runs planned (an LR sweep of {len(defaults['lr_multipliers'])}, then "
        f"{len(defaults['seeds']) - 1} more seeds)."
    )
    if args.dry_run:
        for task, e in cells:
            print(f"  {task:6s} {e.name:32s} {e.peft_type:14s} budget={e.budget}  runs={runs_of(task, e)}")
        return {"planned": planned}
    import transformers

    transformers.logging.set_verbosity_error()  # the per-run load reports (new head weights) would drown the bar
    transformers.utils.logging.disable_progress_bar()
    if defaults["num_threads"]:
        torch.set_num_threads(defaults["num_threads"])
    backbone_dir = resolve_backbone(args.backbone, show_progress=not args.no_progress)
    backbone_name = plan.backbone_name
    meta = {**meta_info(device), "quantization": args.quantization}
    results_dir = Path(args.results_dir)
    base, tokenizer = load_classifier(backbone_dir)  # full precision: "auto" fields are solved on it
    counts = {"ok": 0, "skipped": 0, "error": 0, "cached": 0}
    bar = tqdm(
        total=planned,
        desc=f"suite{index}" if count > 1 else "suite",
        unit="run",
        position=index,
        disable=args.no_progress,
        dynamic_ncols=True,
    )
    runner = Runner(results_dir, backbone_name, backbone_dir, device, meta, counts, bar, args.quantization)
    tokenized_by_task: dict[str, dict] = {}
    resolved_by_name: dict[str, Resolved] = {}
    for task, experiment in cells:
        params = experiment.training_params(task_params(defaults, task))
        if task not in tokenized_by_task:
            rows = task_rows(plan.data_dir, task, params)
            length = max_length(params, task)
            tokenized_by_task[task] = {split: tokenize_glue(r, tokenizer, length) for split, r in rows.items()}
        tokenized = tokenized_by_task[task]
        skipped_file = results_dir / backbone_name / task / experiment.name / SKIPPED_FILE
        try:
            if args.quantization and experiment.full_finetune:
                raise ValueError("full fine-tuning cannot train a quantized backbone (run it without --quantization)")
            if experiment.name not in resolved_by_name:  # the same on every task: solve once per backbone
                resolved_by_name[experiment.name] = resolve(experiment, base)
            resolved = resolved_by_name[experiment.name]
        except Exception as err:  # e.g. a budget the method cannot reach on this backbone; the reason is reported
            reason = f"{type(err).__name__}: {err}"
            info = _run_info(experiment, task, backbone_name, None, None, params, "skipped", reason=reason)
            write_json_atomic({"run_info": info, "meta_info": meta}, skipped_file)
            counts["skipped"] += 1
            bar.update(runs_of(task, experiment))
            continue
        skipped_file.unlink(missing_ok=True)  # it resolves now: an older record must not hide its runs
        structure = structure_info = None
        if experiment.overrides.get("s3pet_structure"):
            structure, structure_info = s3pet_structure(
                experiment,
                resolved.config,
                backbone_dir,
                task,
                tokenized,
                params,
                results_dir / backbone_name / task / "_s3pet_structures",
            )
        cell = Cell(task, experiment, params, resolved, structure, structure_info, tokenized)
        seeds = params["seeds"]
        sweep = [
            runner.run(cell, params["learning_rate_base"] * m, seeds[0], "sweep") for m in params["lr_multipliers"]
        ]
        finished = [r for r in sweep if r["run_info"]["status"] == "ok"]
        if not finished:
            bar.update(len(seeds) - 1)
            continue
        best = max(finished, key=lambda r: (r["train_info"]["val_metric"], -r["run_info"]["learning_rate"]))
        for seed in seeds[1:]:
            runner.run(cell, best["run_info"]["learning_rate"], seed, "seed")
    bar.close()
    print(f"Suite{shard} finished: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return counts


@dataclass
class Cell:
    """One (task, experiment) of the suite, resolved on the backbone."""

    task: str
    experiment: Experiment
    params: dict
    resolved: Resolved
    structure: dict | None
    structure_info: dict | None
    tokenized: dict


@dataclass
class Runner:
    """Trains single runs and writes their results (skipping finished ones)."""

    results_dir: Path
    backbone: str
    backbone_dir: str
    device: str
    meta: dict
    counts: dict
    bar: Any
    quantization: str | None = None

    def run(self, cell: Cell, lr: float, seed: int, phase: str) -> dict:
        """The result of one run: read back when already finished, else trained now (an error is recorded)."""
        from train_one import train_run

        name = cell.experiment.name
        path = result_path(self.results_dir, self.backbone, cell.task, name, lr, seed)
        previous = read_result(path)
        self.bar.set_postfix_str(f"{cell.task} {name} lr={lr:.3g} seed={seed}")
        if previous is not None and previous["run_info"]["status"] in DONE:
            check_same_settings(path, previous["run_info"], settings_of(cell.params, cell.resolved.config))
            self.counts["cached"] += 1
            self.bar.update(1)
            return previous
        start = time.perf_counter()
        resolved = cell.resolved
        info = _run_info(
            cell.experiment,
            cell.task,
            self.backbone,
            lr,
            seed,
            cell.params,
            "ok",
            phase=phase,
            config=resolved.config,
            target=resolved.target,
            backbone_params=resolved.backbone_params,
            structure=cell.structure_info,
        )
        result = {"run_info": info, "train_info": None, "meta_info": self.meta}
        try:
            with tempfile.TemporaryDirectory() as out:
                result["train_info"] = train_run(
                    backbone_dir=self.backbone_dir,
                    config=resolved.config,
                    task=cell.task,
                    data=cell.tokenized,
                    params=cell.params,
                    learning_rate=lr,
                    seed=seed,
                    device=self.device,
                    structure=cell.structure,
                    output_dir=out,
                    quantization=self.quantization,
                )
        except Exception as err:  # recorded and retried on the next run; the suite goes on
            info["status"] = "error"
            info["error"] = f"{type(err).__name__}: {err}"
            info["traceback"] = traceback.format_exc(limit=8)
            logger.error("%s %s lr=%g seed=%d failed: %s", cell.task, name, lr, seed, info["error"])
        info["total_time_s"] = time.perf_counter() - start
        self.counts[info["status"]] += 1
        write_json_atomic(result, path)
        self.bar.update(1)
        return result


def _run_info(experiment: Experiment, task: str, backbone: str, lr, seed, params: dict, status: str, **extra) -> dict:
    return {
        "experiment": experiment.name,
        "label": experiment.label,
        "family": experiment.family,
        "peft_type": experiment.peft_type,
        "ours": experiment.ours,
        "budget": experiment.budget,
        "backbone": backbone,
        "task": task,
        "learning_rate": lr,
        "seed": seed,
        "status": status,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "training_params": {k: v for k, v in params.items() if k not in ("lr_multipliers", "seeds")},
        **extra,
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        if args.workers > 1 and args.shard[1] == 1 and not args.dry_run:
            codes = run_workers(args, argv)
            return 2 if all(c == 2 for c in codes) else int(any(codes))
        counts = run_suite(args)
    except (BackboneError, ExperimentError, UsageError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1 if counts.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
