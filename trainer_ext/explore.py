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

import hashlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from peft_designspace.designspace.budget import InfeasibleBudgetError
from peft_designspace.designspace.refine import Stage, paper_stages, select_best, summarize
from peft_designspace.designspace.space import (
    DesignSampler,
    DesignSpace,
    _label,
    canonical_design,
    check_num_samples,
    design_config,
    tunable_label,
)

from .callbacks import write_json_atomic
from .explore_cli import add_explore_arguments, explore_main, run_explore, space_from_args, stages_from_args
from .explore_eval import (
    DEFAULT_BACKBONE,
    RESULTS_DIR,
    ExploreSettings,
    check_workers,
    evaluate_design,
    evaluate_designs,
    load_result,
    result_key,
    result_path,
    train_and_score,
)
from .explore_report import plot_edfs, write_report

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BACKBONE",
    "RESULTS_DIR",
    "ExplorationResult",
    "ExploreSettings",
    "StageOutcome",
    "add_explore_arguments",
    "evaluate_design",
    "evaluate_designs",
    "explore_main",
    "load_result",
    "plot_edfs",
    "result_key",
    "result_path",
    "run_exploration",
    "run_explore",
    "space_from_args",
    "stages_from_args",
    "train_and_score",
    "write_report",
]


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
        model (`nn.Module`, *optional*): the base model used to check budgets; by default built from `settings`'s
            backbone config on the meta device (no weights are loaded: only its layers and size are read).
        report_path / plots_dir (`str`, *optional*): markdown report and plot folder (defaults: in `output_dir`).
        evaluate (`bool`, *optional*, defaults to `True`): `False` trains nothing: the stages are replayed from the
            stored results up to the first stage with missing designs, and a partial report is written.

    Raises:
        ValueError: `num_samples` < 2, `workers` < 1, an empty or contradictory space, or a budget that no design
            meets.
    """
    check_num_samples(num_samples)
    check_workers(workers)
    space = space if space is not None else DesignSpace()
    stages = list(stages) if stages is not None else paper_stages(space.num_groups)
    results_dir = os.path.join(output_dir, RESULTS_DIR)
    report_path = report_path or os.path.join(output_dir, "report.md")
    plots_dir = plots_dir or os.path.join(output_dir, "plots")
    if model is None:  # only its layers and parameter count are read
        model = settings.meta_model()
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
        # a group's strategies are compared on designs that tune the group (also when a custom order puts the stage
        # before the tunable-groups stage); the refined space keeps its other tunable sets
        stage_space = space if stage.group is None else _tuning(space, stage.group)
        for value in values:
            label = _value_label(stage, value)
            constrained = stage_space.constrain(stage.component, value, stage.group)
            try:
                samples[label] = (
                    value,
                    sampler.sample(constrained, num_samples, seed=_candidate_seed(seed, stage, label)),
                )
            except InfeasibleBudgetError as err:  # any other planning error is the user's to see
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
        missing = len({result_key(d, settings, evaluator) for d in designs}) - len(results)
        if missing:
            stopped = f"{stage.title} (stage {index}): {len(results)} of {len(results) + missing} designs evaluated"
            return _finish_partial(
                settings, start_space, space, outcomes, all_results, report_path, plots_dir, stopped
            )
        evaluated += sum(not r["cached"] for r in results.values())
        all_results.update(results)
        errors = {
            label: [results[result_key(d, settings, evaluator)]["error"] for d in ds]
            for label, (_, ds) in samples.items()
        }
        best = select_best(errors)
        plot = f"stage{index}_{stage.name}.png"
        if evaluate:  # drawn as the stages finish; a replay draws them at the end, once their folder is known
            plot = plot_edfs(stage.title, errors, os.path.join(plots_dir, plot))
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
    final = {"evaluator": evaluator, "seed": seed, "evaluate": evaluate, "plots_dir": plots_dir}
    return _finish(
        settings, output_dir, start_space, space, outcomes, all_results, evaluated, report_path, sampler, **final
    )


def _tuning(space: DesignSpace, group: int) -> DesignSpace:
    """`space` with only the tunable-group sets that include `group`."""
    return replace(space, tunable_groups=[t for t in space.tunable_groups if group in t])


def _skipped(stage: Stage, note: str, value: Any = None) -> StageOutcome:
    label = _value_label(stage, value) if value is not None else "-"
    return StageOutcome(stage.name, stage.title, {}, {}, label, value, None, [note])


def _shown(result: dict) -> dict:
    """A stored result with its design in canonical form: the strategies of groups it does not tune are `None`.

    The sampler draws strategies for every group, but those of untuned groups change nothing (result keys ignore
    them too), so `best_design.json` and `ExplorationResult.best_design` do not show them.
    """
    return {**result, "design": canonical_design(result["design"])}


def _draw_plots(outcomes: list[StageOutcome], plots_dir: str) -> None:
    """Draw each compared stage's EDF plot into `plots_dir` (`outcome.plot` holds its file name until then)."""
    for outcome in outcomes:
        if outcome.plot is not None and not os.path.dirname(outcome.plot):  # not drawn yet
            outcome.plot = plot_edfs(outcome.title, outcome.candidates, os.path.join(plots_dir, outcome.plot))


def _finish_partial(settings, start_space, space, outcomes, all_results, report_path, plots_dir, stopped):
    if _is_finished_report(report_path):  # e.g. `--report_only` without the options of the finished exploration
        root, ext = os.path.splitext(report_path)
        partial_path = f"{root}.partial{ext or '.md'}"
        partial_plots = os.path.normpath(plots_dir) + ".partial"
        logger.warning(
            "%s is the report of a finished exploration and is kept with its plots; the partial one is %s (plots in "
            "%s)",
            report_path,
            partial_path,
            partial_plots,
        )
        report_path, plots_dir = partial_path, partial_plots
    _draw_plots(outcomes, plots_dir)
    in_space = [r for r in all_results.values() if _in_space(r["design"], space)]
    best = _shown(min(in_space, key=lambda r: (r["error"], r["key"]))) if in_space else None
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


def _is_finished_report(path: str) -> bool:
    """Whether `path` is an exploration report with an outcome (not a partial one)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "\n## Outcome\n" in f.read()
    except OSError:
        return False


def _finish(settings, output_dir, start_space, space, outcomes, all_results, evaluated, report_path, sampler, **final):
    in_space = [r for r in all_results.values() if _in_space(r["design"], space)]
    if not in_space:  # no evaluated design lies in the final space (e.g. only skipped stages): evaluate one
        design = sampler.sample(space, 2, seed=final["seed"])[0]
        results = evaluate_designs(
            [design],
            settings,
            os.path.join(output_dir, RESULTS_DIR),
            evaluator=final["evaluator"],
            desc="final design",
            progress=False,
            stored_only=not final["evaluate"],
        )
        if not results:  # `evaluate=False` and the design is not stored yet
            stopped = "the final space (its one design is not evaluated yet)"
            return _finish_partial(
                settings, start_space, space, outcomes, all_results, report_path, final["plots_dir"], stopped
            )
        evaluated += sum(not r["cached"] for r in results.values())
        all_results.update(results)
        in_space = list(results.values())
    _draw_plots(outcomes, final["plots_dir"])
    best = _shown(min(in_space, key=lambda r: (r["error"], r["key"])))
    config = design_config(best["design"], settings.budget, task_type="SEQ_CLS", **settings.config_kwargs)
    os.makedirs(output_dir, exist_ok=True)
    from adapters_hub._files import atomic_output_dir

    # written whole, then swapped in: an interrupted rerun keeps the previous run's folder (PEFT's own config writer
    # truncates the file first)
    with atomic_output_dir(os.path.join(output_dir, "best_config"), overwrite=True) as folder:
        config.save_pretrained(folder)
    write_json_atomic(space.to_dict(), os.path.join(output_dir, "final_space.json"))
    write_json_atomic(best, os.path.join(output_dir, "best_design.json"))
    result = ExplorationResult(outcomes, space, best["design"], best["error"], config, report_path, evaluated)
    write_report(result, settings, start_space, all_results, output_dir)
    return result


if __name__ == "__main__":
    sys.exit(explore_main())
