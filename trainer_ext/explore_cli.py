"""`peft-designspace explore` / `python -m trainer_ext.explore`: the command line of `trainer_ext.explore`."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from peft_designspace.designspace.refine import Stage, paper_stages
from peft_designspace.designspace.space import (
    DesignSpace,
    check_num_samples,
    design_label,
)

from .explore_eval import DEVICES, RESULTS_DIR, ExploreSettings, check_workers
from .explore_report import TITLE

logger = logging.getLogger(__name__)


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
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="Where designs train: cpu (reproducible) or auto (an accelerator when there is one).",
    )
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
    parser.add_argument("-q", "--quiet", action="store_true", help="No progress bars.")
    parser.add_argument("--debug", action="store_true", help="Show the full traceback when the run fails.")
    parser.add_argument(
        "--report_only", action="store_true", help="Train nothing: report the stages the stored results complete."
    )
    return parser


def space_from_args(args: argparse.Namespace) -> DesignSpace:
    data: dict = {}
    if args.space:
        if not os.path.isfile(args.space):
            raise ValueError(f"--space {args.space!r} is not a file; expected a JSON object of space settings.")
        try:
            with open(args.space, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"--space {args.space!r} is not valid JSON: {err}.") from None
        if not isinstance(data, dict):
            raise ValueError(
                f'--space {args.space!r} must hold a JSON object of space settings (e.g. {{"groupings": [...]}}), '
                f"got a {type(data).__name__}."
            )
    k = data.get("num_groups", 4)
    split = lambda text: [t.strip() for t in text.split(",") if t.strip()]  # noqa: E731
    if args.groupings is not None:
        data["groupings"] = split(args.groupings)
    if args.allocations is not None:
        data["allocations"] = split(args.allocations)
    if args.tunable_groups is not None:
        try:
            numbers = [[int(c) for c in item] for item in split(args.tunable_groups)]
        except ValueError:
            numbers = None
        if numbers is None or any(n < 1 for item in numbers for n in item):
            raise ValueError(
                f"--tunable_groups must be 1-based group digits such as 1234,123; got {args.tunable_groups!r}."
            )
        data["tunable_groups"] = [[n - 1 for n in item] for item in numbers]
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


# marks an exploration's folder (resumed in place); not the pack's output marker, which would let `train --overwrite`
# replace the whole exploration
EXPLORATION_MARKER = ".peft-designspace-exploration"
PATH_OPTIONS = ("data_dir", "model_name_or_path", "output_dir", "report", "plots_dir", "space")


def check_model_and_output(args: argparse.Namespace) -> None:
    """Check `--model_name_or_path`, `--output_dir`, `--report` and `--plots_dir` without creating or loading
    anything (ValueError naming the option if bad). `~` in these paths is expanded."""
    from adapters_hub._files import check_creatable, expand_home, inside_inputs, never_replaced

    expand_home(args, PATH_OPTIONS)  # (also here for direct callers; a second expansion changes nothing)
    model = args.model_name_or_path
    if model is not None and not os.path.isfile(os.path.join(model, "config.json")):
        what = "a folder without config.json" if os.path.isdir(model) else "not a folder"
        raise ValueError(
            f"--model_name_or_path {model!r} is {what}; expected a local transformers model folder with "
            "config.json (explore runs offline), or leave it unset for the packaged MiniLM-L6."
        )
    inputs = [args.data_dir, model]
    output = Path(args.output_dir)
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output_dir {args.output_dir!r} exists and is not a folder; choose a folder path.")
    why = never_replaced(output.resolve(), inputs) or inside_inputs(output, inputs)
    if why:
        raise ValueError(f"--output_dir {args.output_dir!r} {why}; choose a new folder for the exploration.")
    # the exploration resumes in its folder, so it writes there in place: only into an earlier exploration's folder
    # (its marker, or the `results/` it stores designs in), never into a folder of the user's own
    if (
        output.is_dir()
        and any(output.iterdir())
        and not ((output / EXPLORATION_MARKER).exists() or (output / RESULTS_DIR).is_dir())
    ):
        raise ValueError(
            f"--output_dir {args.output_dir!r} is not empty and holds no earlier exploration (no {RESULTS_DIR}/ "
            f"folder, no {EXPLORATION_MARKER} file); its files would be overwritten. Choose a new or empty folder."
        )
    try:
        check_creatable(args.output_dir)  # the exploration writes into the folder itself (it resumes from it)
    except OSError as err:
        raise ValueError(f"--output_dir {err}") from None
    if args.report:
        report = Path(args.report)
        why = inside_inputs(report, inputs)
        if why or report.suffix != ".md":
            raise ValueError(f"--report {args.report!r} {why or 'must be a Markdown file (.md)'}.")
        if report.exists() and (not report.is_file() or not report.read_text(errors="replace").startswith(TITLE)):
            raise ValueError(
                f"--report {args.report!r} exists and is not an exploration report (it does not start with "
                f"{TITLE!r}); choose another path, it is not overwritten."
            )
    if args.plots_dir:
        why = inside_inputs(Path(args.plots_dir), inputs) or never_replaced(Path(args.plots_dir).resolve(), inputs)
        if why:
            raise ValueError(f"--plots_dir {args.plots_dir!r} {why}; choose a new folder for the plots.")


def check_task_and_data(args: argparse.Namespace) -> None:
    """Resolve `args.task` and read the GLUE folder once (ValueError naming the option if either is bad)."""
    from .glue import TASKS, folder_name, load_glue_folder, normalize_task, task_of_folder

    if args.task is not None:
        try:
            args.task = normalize_task(args.task)
        except ValueError:
            raise ValueError(f"--task {args.task!r} is not supported; choose one of {', '.join(TASKS)}.") from None
    else:
        args.task = task_of_folder(args.data_dir)
        if args.task is None:
            raise ValueError(
                f"--data_dir {args.data_dir!r}: cannot infer the GLUE task from the folder name "
                f"{folder_name(args.data_dir)!r}; pass --task ({', '.join(TASKS)})."
            )
    try:
        load_glue_folder(args.data_dir, task=args.task)
    except (ValueError, FileNotFoundError) as err:
        raise ValueError(f"--data_dir {err}") from None


def run_explore(args: argparse.Namespace) -> int:
    """Run the exploration described by parsed `add_explore_arguments` options; return the exit status.

    Bad options raise `ValueError` (or `FileNotFoundError`) naming the option before anything is written; errors of
    the run itself (e.g. no candidate of a later stage meets the budget) come from the run."""
    return _run_checked(args, check_explore_options(args))


def check_explore_options(args: argparse.Namespace) -> tuple[ExploreSettings, DesignSpace, list[Stage], Any]:
    """Check every option of `args` against the files it names, before anything is written; return the run's
    settings, starting space, stages and the backbone on the meta device that the budget was checked on
    (ValueError or FileNotFoundError naming the option if one is bad)."""
    from adapters_hub._files import expand_home

    expand_home(args, PATH_OPTIONS)  # `--data_dir=~/x` reaches us unexpanded
    if not os.path.isfile(os.path.join(args.data_dir, "train.tsv")):  # before any model is loaded
        raise ValueError(
            f"--data_dir {args.data_dir!r} holds no train.tsv; expected a GLUE folder such as "
            "../shared/data/glue/SST-2."
        )
    check_model_and_output(args)
    if not math.isfinite(args.budget) or args.budget <= 0 or (args.budget >= 1 and args.budget != int(args.budget)):
        raise ValueError(
            "--budget must be a fraction of the backbone in (0, 1) or a whole parameter count >= 1, got "
            f"{args.budget!r}."
        )
    space = space_from_args(args)
    stages = stages_from_args(args, space.num_groups)
    check_task_and_data(args)  # reads the TSV files
    check_num_samples(args.num_samples)
    check_workers(args.workers)
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
        device=args.device,
    )  # checks its fields: all before the output folder is made
    return settings, space, stages, _check_budget_is_met(args, settings, space)


def _check_budget_is_met(args: argparse.Namespace, settings: ExploreSettings, space: DesignSpace) -> Any:
    """Refuse a `--budget` that no design of the starting space meets (checked on the backbone's config on the meta
    device, which is returned for the run); a later stage's candidates that miss it are the run's to report."""
    from peft_designspace.designspace.budget import InfeasibleBudgetError
    from peft_designspace.designspace.space import DesignSampler

    model = settings.meta_model()
    sampler = DesignSampler(model, settings.budget, config_kwargs=dict(settings.config_kwargs))
    try:
        sampler.sample(space, 2, seed=args.seed)
    except InfeasibleBudgetError as err:
        raise ValueError(f"--budget {args.budget:g}: {err}") from None
    return model


def _run_checked(args: argparse.Namespace, checked: tuple[ExploreSettings, DesignSpace, list[Stage], Any]) -> int:
    """Run the exploration with what `check_explore_options` returned; return the exit status."""
    from .explore import run_exploration  # the façade imports this module

    settings, space, stages, model = checked
    os.makedirs(args.output_dir, exist_ok=True)  # marked as the exploration's: a later run may resume in it
    marker = Path(args.output_dir) / EXPLORATION_MARKER
    if not marker.exists():
        marker.write_text(json.dumps({"written_by": "peft-designspace explore"}) + "\n", encoding="utf-8")
    result = run_exploration(
        settings,
        args.output_dir,
        space=space,
        num_samples=args.num_samples,
        seed=args.seed,
        workers=args.workers,
        stages=stages,
        model=model,
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


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help, as in the other commands, except where the help text already describes them."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def explore_main(argv: list[str] | None = None) -> int:
    """`peft-designspace explore` as a function: parse `argv`, run, return the exit status (2 on bad input)."""
    from adapters_hub.cli import EXIT_CODES  # light: the command line imports nothing heavy at the top

    parser = add_explore_arguments(
        argparse.ArgumentParser(
            prog="peft-designspace explore",
            description="Explore the S4 design space.",
            epilog=EXIT_CODES,
            formatter_class=_DefaultsFormatter,
        )
    )
    args = parser.parse_args(argv)
    if args.quiet:  # as `peft-designspace` does for its other commands
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read by huggingface_hub, transformers and datasets
        import transformers

        transformers.logging.set_verbosity_warning()
        transformers.logging.disable_progress_bar()
    level = logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level)
    logging.getLogger().setLevel(level)  # also when logging was configured before (basicConfig is then a no-op)
    try:
        checked = check_explore_options(args)
    except (ValueError, FileNotFoundError) as err:  # bad options: nothing was written
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    try:
        return _run_checked(args, checked)
    except KeyboardInterrupt:
        raise
    except Exception as err:  # a failed run, ValueError included: exit 1 with one line, as the other commands
        if args.debug:
            raise
        print(
            f"{parser.prog}: error: {type(err).__name__}: {err}\n(run with --debug for the traceback)", file=sys.stderr
        )
        return 1
    return 2
