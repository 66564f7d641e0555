"""Training-step time of design-space S4 against PEFT's LoRA at the same trainable-parameter count.

Model: a MiniLM-L6-shaped BERT built from a config (random init, no download), `BertForSequenceClassification` with
2 labels. Batch: `--batch-size` x `--seq-len` random token ids, full attention mask, random labels. Device: CPU.

One step = `zero_grad` + forward + backward + `AdamW.step` (train mode, dropout on), timed with `time.perf_counter`.

Equal budgets: S4 is built first at `--budget`; its realised trainable count (`budget_report().realised`, classifier
excluded) fixes the PEFT LoRA rank on `--lora-targets` whose count (classifier excluded) is closest to it. The
single-strategy presets of the design space (`adapter`, `prefix`, `bitfit`, `lora`) are timed at the same budget as
extra rows (BitFit has a fixed size). Every method also trains the classifier head (`modules_to_save`).

Methodology. A small shared machine drifts, and other processes taking a core slow a 2-thread step down several times
over. So:

* every method gets `--warmup` untimed steps, then rounds follow; in each round every method runs `--round-steps`
  timed steps, the method order rotating from round to round, so that slow phases hit every method alike;
* on Linux each timed step also records how many cores *other* processes used meanwhile (busy time of `/proc/stat`
  minus this process's CPU time). A step is *clean* when that is under `--max-foreign-load`; before each block the
  script waits (at most `--wait-quiet` seconds) for a quiet half-second. Rounds go on until every method has
  `--steps` clean steps, at most `--max-rounds` rounds. `--no-filter` turns this off (every step counts);
* the statistics are over the clean steps (over all steps, flagged, for a method with fewer than 3 clean ones): median
  and min wall time, p10-p90 spread, the ratio of the median (and of the min) to PEFT LoRA's, the paired ratio
  (median over rounds of the method's round median over LoRA's in the same round, with its range), and the median
  CPU time of the process per step (`time.process_time`, all threads). Both sides of a ratio use the same steps:
  the clean ones when both methods have 3 or more, else all of them; a target is then not judged (contended);
* a reading of `/proc/stat` is only as fine as the clock tick, so steps shorter than about CPUs x tick /
  `--max-foreign-load` (200 ms on 2 CPUs at the defaults) cannot be told clean reliably: the run warns when they are.

Peak RSS is measured afterwards, one fresh process per method (`--no-memory` skips it).

The timing, contention and memory machinery is shared with the other benchmarks (`bench/_timing.py`), the model with
`bench/_minilm.py`.

Example:

```
python bench/designspace_step_time.py --json bench/results/designspace_step_time.json
```
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time
import warnings
from pathlib import Path

from _minilm import (
    MODEL_SHAPE,
    build_base,
    check_seq_len,
    encoder_linear_names,
    lora_cost_per_rank,
    make_batch,
    meta_base,
    method_params,
)
from _timing import (
    MIN_CLEAN,
    ForeignLoad,
    Method,
    add_timing_arguments,
    check_json_path,
    check_positive,
    check_timing_arguments,
    environment,
    import_pack,
    load_average,
    make_optimizer,
    measure_memory,
    profile_methods,
    run_rounds,
    summarise,
    verdict,
    verdict_text,
    write_json,
)

BASELINE = "peft-lora"
DS_PRESETS = ("adapter", "prefix", "bitfit", "lora")
ALL_METHODS = (BASELINE, "s4", *(f"ds-{p}" for p in DS_PRESETS))


# ---------------------------------------------------------------------------------------------------------------
# command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Time one training step (zero_grad + forward + backward + AdamW step) of design-space S4 against PEFT "
            "LoRA at the same trainable-parameter count, plus the single-strategy design-space presets, on a "
            "MiniLM-L6-shaped BERT (random init) on CPU. Methods are timed in rotating rounds; on Linux, steps "
            "during which other processes used the CPU are detected and left out of the statistics."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=0.005,
        help="S4 budget: fraction of the base parameters (< 1) or an absolute count (>= 1). The PEFT LoRA rank is "
        "then chosen to match S4's realised count; the design-space presets use the same budget.",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=ALL_METHODS,
        default=list(ALL_METHODS),
        help=f"Methods to time; {BASELINE} (the reference of the ratios) and s4 (which fixes the budget) are "
        "always included.",
    )
    parser.add_argument(
        "--lora-targets",
        nargs="+",
        default=["query", "value"],
        help="Module names that get PEFT LoRA (last name parts of the encoder's nn.Linear modules: dense, key, "
        "query, value).",
    )
    add_timing_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=32, help="Sequences per batch.")
    parser.add_argument("--seq-len", type=int, default=64, help="Tokens per sequence.")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads value.")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the base weights, the batch and the adapters.")
    parser.add_argument(
        "--target-ratio", type=float, default=1.15, help="Target: S4 median step time <= this x PEFT LoRA's."
    )
    parser.add_argument(
        "--no-memory",
        action="store_true",
        help="Skip the peak-RSS measurement (one fresh process per method, after the timing).",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="After the timing, profile one step of S4 and one of PEFT LoRA with torch.profiler and print the top "
        "operators of each by self CPU time (also stored in the JSON).",
    )
    parser.add_argument(
        "--json", metavar="PATH", type=Path, default=None, help="Also write the results as JSON to PATH."
    )
    parser.add_argument("--no-progress", action="store_true", help="Hide the tqdm progress bar.")
    args = parser.parse_args(argv)
    check_timing_arguments(parser, args, positive=("threads", "batch_size", "seq_len"))
    check_positive(parser, args, ("lr", "target_ratio"))
    check_seq_len(parser, args.seq_len)
    check_json_path(parser, args.json)
    budget = args.budget
    if not (math.isfinite(budget) and budget > 0) or (budget >= 1 and budget != int(budget)):
        parser.error(f"--budget must be a fraction in (0, 1) or a whole count >= 1, got {budget:g}")
    args.methods = [m for m in ALL_METHODS if m in set(args.methods) | {BASELINE, "s4"}]
    check_on_model_shape(parser, args)
    return args


def check_on_model_shape(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """`--lora-targets` must name encoder linears and `--budget` must be feasible for every timed design-space
    method: checked by building them on the meta device (no memory, no init) before any real model."""
    import_pack()
    from peft_designspace.designspace.budget import InfeasibleBudgetError

    _quiet_warnings()
    allowed = encoder_linear_names(meta_base())
    unknown = [name for name in args.lora_targets if name not in allowed]
    if unknown:
        parser.error(f"--lora-targets must be among {', '.join(allowed)}, got {' '.join(unknown)}")
    for name in args.methods:
        if name == BASELINE:
            continue
        try:
            build_method(name, args, base=meta_base())
        except InfeasibleBudgetError as error:
            parser.error(f"--budget {args.budget:g} is infeasible for {name}: {error}")


# ---------------------------------------------------------------------------------------------------------------
# models


def _quiet_warnings() -> None:
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)


def closest_rank(target: int, cost: int) -> int:
    """LoRA rank whose count `rank * cost` is closest to `target` (the smaller rank on a tie)."""
    low = max(1, target // cost)
    return min((low, low + 1), key=lambda r: (abs(r * cost - target), r))


def build_method(name: str, args: argparse.Namespace, lora_rank: int | None = None, base=None):
    """Return `(model, description, details)` for method `name`, on a freshly seeded base (or on `base`)."""
    import torch
    from peft import LoraConfig, get_peft_model

    pack = import_pack()
    base = build_base(args.seed) if base is None else base
    budget = int(args.budget) if args.budget >= 1 else args.budget
    torch.manual_seed(args.seed + 2)
    if name == BASELINE:
        config = LoraConfig(r=lora_rank, target_modules=list(args.lora_targets), lora_dropout=0.0, task_type="SEQ_CLS")
        model = get_peft_model(base, config)
        description = f"PEFT LoRA r={lora_rank} on {','.join(args.lora_targets)}"
        return model, description, {"rank": lora_rank, "targets": list(args.lora_targets)}
    preset = "s4" if name == "s4" else name.removeprefix("ds-")
    with warnings.catch_warnings():
        if preset == "bitfit":  # BitFit has a fixed size, far under the budget: expected
            warnings.simplefilter("ignore", pack.DesignSpaceWarning)
        model = get_peft_model(base, pack.DesignSpaceConfig(preset=preset, budget=budget, task_type="SEQ_CLS"))
    report = model.base_model.budget_report()
    plan = model.peft_config["default"].plan
    details = {
        "preset": preset,
        "target": report.target,
        "base_params": report.base_params,
        "realised": report.realised,
        "per_strategy": report.per_strategy,
        "sizes_per_layer": [layer["sizes"] for layer in plan["layers"]],
    }
    return model, f"design space preset={preset}", details


def memory_setup(name: str, args: argparse.Namespace, lora_rank: int | None):
    """`(model, optimizer, batch)` of one method, for `measure_memory` (runs in a fresh process)."""
    _quiet_warnings()
    model, _, _ = build_method(name, args, lora_rank)
    return model, make_optimizer(model, args.lr), make_batch(args.batch_size, args.seq_len, args.seed)


# ---------------------------------------------------------------------------------------------------------------
# output


def _mib(value: float | None) -> str:
    return "    - MiB" if value is None else f"{value:>5.0f} MiB"


def format_table(rows: list[dict], memory: bool) -> str:
    header = (
        f"{'method':<10} {'trainable':>9} {'+head':>5} {'clean':>7} {'median ms':>9} {'min ms':>8} "
        f"{'p10-p90 ms':>15} {'x LoRA':>6} {'paired x LoRA (range)':>21} {'min x LoRA':>10} {'CPU ms':>8} "
        f"{'CPU x LoRA':>10}"
    )
    if memory:
        header += f" {'peak RSS':>9} {'step +RSS':>9}"
    lines = [header, "-" * len(header)]
    for row in rows:
        paired = f"{row['paired_ratio_median']:.3f} ({row['paired_ratio_min']:.2f}-{row['paired_ratio_max']:.2f})"
        clean = f"{row['steps_clean']}/{row['steps_total']}" + ("!" if row["contended"] else "")
        line = (
            f"{row['method']:<10} {row['method_params']:>9,} {row['head_params']:>5} {clean:>7} "
            f"{row['median_ms']:>9.1f} {row['min_ms']:>8.1f} {row['p10_ms']:>7.1f}-{row['p90_ms']:<7.1f} "
            f"{row['ratio']:>6.3f} {paired:>21} {row['min_ratio']:>10.3f} {row['cpu_median_ms']:>8.1f} "
            f"{row['cpu_ratio']:>10.3f}"
        )
        if memory:
            line += f" {_mib(row.get('peak_rss_mib'))} {_mib(row.get('step_rss_growth_mib'))}"
        lines.append(line)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    _quiet_warnings()
    torch.set_num_threads(args.threads)
    import_pack()

    # S4 first: its realised count fixes the LoRA rank
    s4_model, s4_description, s4_details = build_method("s4", args)
    s4_params, _ = method_params(s4_model)
    if s4_params != s4_details["realised"]:
        raise RuntimeError(f"S4 trainable count {s4_params} != budget_report().realised {s4_details['realised']}")
    cost = lora_cost_per_rank(build_base(args.seed), args.lora_targets)
    rank = closest_rank(s4_params, cost)

    methods: list[Method] = []
    for name in args.methods:
        if name == "s4":
            model, description, details = s4_model, s4_description, s4_details
        else:
            model, description, details = build_method(name, args, rank)
        params, head = method_params(model)
        if name == BASELINE and params != rank * cost:
            raise RuntimeError(f"PEFT LoRA r={rank} has {params} trainable parameters, expected {rank * cost}")
        methods.append(Method(name, description, model, make_optimizer(model, args.lr), params, head, details))
    by_name = {m.name: m for m in methods}
    baseline, s4 = by_name[BASELINE], by_name["s4"]

    print(f"Base model: BERT {MODEL_SHAPE}, 2 labels, {s4_details['base_params']:,} parameters, random init")
    print(
        f"Equal budgets: S4 realised {s4.method_params:,} trainable (budget {args.budget:g}, target "
        f"{s4_details['target']:,}); PEFT LoRA r={rank} on {','.join(args.lora_targets)} = {baseline.method_params:,} "
        f"({baseline.method_params / s4.method_params - 1:+.2%}); classifier head {s4.head_params} on both"
    )
    load = ForeignLoad()
    filtering = not args.no_filter and load.available
    print(
        f"Step = zero_grad + forward + backward + AdamW; batch {args.batch_size} x {args.seq_len}; "
        f"{args.threads} threads; {args.warmup} warm-up steps, then rounds of {args.round_steps} timed steps per "
        f"method until {args.steps} "
        + (
            f"clean steps each (other processes < {args.max_foreign_load:g} cores), at most {args.max_rounds} rounds"
            if filtering
            else f"steps each ({args.max_rounds} rounds, no contention filter)"
        )
    )
    batch = make_batch(args.batch_size, args.seq_len, args.seed)
    load_before = load_average()
    started = time.perf_counter()
    run = run_rounds(methods, batch, args, load)
    run["duration_s"] = time.perf_counter() - started
    load_after = load_average()
    rows = [summarise(m, baseline, run["filtering"]) for m in methods]

    profiles = profile_methods([s4, baseline], batch) if args.profile else None

    memory = None
    if not args.no_memory:
        for method in methods:  # free the timing models before the memory processes run
            method.model = method.optimizer = None
        del s4_model
        gc.collect()
        jobs = {name: (name, args, rank) for name in args.methods}
        memory = measure_memory(memory_setup, jobs, args.threads)
        for row in rows:
            row.update(memory[row["method"]])

    print()
    print(format_table(rows, memory is not None))
    s4_row = next(r for r in rows if r["method"] == "s4")
    target = verdict(s4_row, args.target_ratio)
    print(
        f"\nS4 / PEFT LoRA median step time: {s4_row['ratio']:.3f} "
        f"(paired per round {s4_row['paired_ratio_median']:.3f}, "
        f"range {s4_row['paired_ratio_min']:.3f}-{s4_row['paired_ratio_max']:.3f}; mins {s4_row['min_ratio']:.3f}; "
        f"CPU time {s4_row['cpu_ratio']:.3f}); target <= {args.target_ratio:g}: {verdict_text(target)}"
    )
    if run.get("warning"):
        print(f"warning: {run['warning']}")
    print(
        f"{run['rounds']} rounds in {run['duration_s']:.0f} s"
        + (f", {run['waited_s']:.0f} s of it in quiet checks before the blocks (>= 0.5 s each)" if filtering else "")
        + (
            f"; clean = timed steps during which other processes used < {args.max_foreign_load:g} cores "
            f"('!': fewer than {MIN_CLEAN} clean; then all steps of it and of LoRA are used for its ratios)"
            if filtering
            else "; no contention filter: every step counts"
        )
    )
    if load_before is not None:
        print(
            f"load average (1/5/15 min) before the rounds {'/'.join(f'{x:.2f}' for x in load_before)}, after "
            f"{'/'.join(f'{x:.2f}' for x in load_after)} on {os.cpu_count()} CPUs"
        )
    if memory:
        print("peak RSS: VmHWM of a fresh process per method; step +RSS: growth of the peak over 2 training steps")
    if profiles:
        for name, table in profiles.items():
            print(f"\ntorch.profiler, one step of {name}, by self CPU time:\n{table}")

    if args.json is not None:
        payload = {
            "benchmark": "designspace_step_time",
            "command": " ".join([Path(sys.argv[0]).as_posix(), *(sys.argv[1:] if argv is None else argv)]),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "environment": {
                **environment(),
                "load_average_before": load_before,
                "load_average_after": load_after,
            },
            "model": {**MODEL_SHAPE, "num_labels": 2, "base_params": s4_details["base_params"]},
            "lora_rank": rank,
            "lora_params_per_rank": cost,
            "run": run,
            "results": rows,
            "target": {
                "ratio": args.target_ratio,
                "s4_ratio": s4_row["ratio"],
                "met": target["met"],
                "judged": target["judged"],
            },
            "profiles": profiles,
        }
        write_json(args.json, payload)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
