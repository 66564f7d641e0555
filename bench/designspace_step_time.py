"""Training-step time of design-space S4 against PEFT's LoRA at the same trainable-parameter count.

Model: a MiniLM-L6-shaped BERT built from a config (random init, no download), `BertForSequenceClassification` with
2 labels. Batch: `--batch-size` x `--seq-len` random token ids, full attention mask, random labels. Device: CPU.

One step = `zero_grad` + forward + backward + `AdamW.step`, timed with `time.perf_counter`.

Equal budgets: S4 is built first at `--budget`; its realised trainable count (`budget_report().realised`, classifier
excluded) fixes the PEFT LoRA rank on `--lora-targets` whose count (classifier excluded) is closest to it. The
single-strategy presets of the design space (`adapter`, `prefix`, `bitfit`, `lora`) are timed at the same budget as
extra rows (BitFit has a fixed size). Every method also trains the classifier head (`modules_to_save`).

Methodology (a noisy 2-core machine drifts): every method gets `--warmup` untimed steps, then `--rounds` rounds; in
each round every method runs `--round-warmup` untimed steps then its share of the `--steps` timed steps, the method
order rotating from round to round. Reported per method: median and min of all timed steps, their spread (p10-p90
and the range of the per-round medians), the ratio of its median to PEFT LoRA's, and the per-round paired ratio
range. Peak RSS is measured afterwards, one fresh process per method (`--no-memory` skips it).

Example:

```
python bench/designspace_step_time.py --json /tmp/step_time.json
```
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BASELINE = "peft-lora"
DS_PRESETS = ("adapter", "prefix", "bitfit", "lora")
ALL_METHODS = (BASELINE, "s4", *(f"ds-{p}" for p in DS_PRESETS))
MODEL_SHAPE = {
    "vocab_size": 30522,
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "max_position_embeddings": 512,
}


# ---------------------------------------------------------------------------------------------------------------
# command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Time one training step (zero_grad + forward + backward + AdamW step) of design-space S4 against PEFT "
            "LoRA at the same trainable-parameter count, plus the single-strategy design-space presets, on a "
            "MiniLM-L6-shaped BERT (random init) on CPU."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=0.005,
        help="S4 budget: fraction of the base parameters (< 1) or an absolute count (>= 1). The LoRA rank is then "
        "chosen to match S4's realised count.",
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
        help="Module names that get PEFT LoRA.",
    )
    parser.add_argument("--steps", type=int, default=20, help="Timed steps per method, spread over the rounds.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps per method before the first round.")
    parser.add_argument("--rounds", type=int, default=5, help="Rounds; each round times every method in turn.")
    parser.add_argument(
        "--round-warmup", type=int, default=1, help="Untimed steps per method at the start of each of its blocks."
    )
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
        help="After the timing, profile one step of S4 and of PEFT LoRA with torch.profiler and print the top "
        "operators of each.",
    )
    parser.add_argument(
        "--json", metavar="PATH", type=Path, default=None, help="Also write the results as JSON to PATH."
    )
    parser.add_argument("--no-progress", action="store_true", help="Hide the tqdm progress bar.")
    args = parser.parse_args(argv)
    for name in ("steps", "rounds", "threads", "batch_size", "seq_len"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("warmup", "round_warmup"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.rounds > args.steps:
        parser.error("--rounds must not exceed --steps (every round times at least one step per method)")
    if not args.budget > 0 or (args.budget >= 1 and args.budget != int(args.budget)):
        parser.error("--budget must be a fraction in (0, 1) or a whole count >= 1")
    methods = [m for m in ALL_METHODS if m in set(args.methods) | {BASELINE, "s4"}]
    args.methods = methods
    return args


# ---------------------------------------------------------------------------------------------------------------
# models


def _import_pack():
    """Import `peft_designspace`, from the repository checkout when it is not installed."""
    if importlib.util.find_spec("peft_designspace") is None:
        sys.path.insert(0, str(REPO_ROOT))
    import peft_designspace

    return peft_designspace


def _quiet_warnings() -> None:
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)


def build_base(seed: int):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(**MODEL_SHAPE, num_labels=2)
    return BertForSequenceClassification(config)


def make_batch(batch_size: int, seq_len: int, seed: int) -> dict:
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    return {
        "input_ids": torch.randint(0, MODEL_SHAPE["vocab_size"], (batch_size, seq_len), generator=generator),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
        "labels": torch.randint(0, 2, (batch_size,), generator=generator),
    }


def method_params(model) -> tuple[int, int]:
    """`(method, head)` trainable parameter counts: the classifier (`modules_to_save`) apart."""
    method = head = 0
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if ".modules_to_save." in name:
            head += param.numel()
        else:
            method += param.numel()
    return method, head


def lora_cost_per_rank(base, targets: list[str]) -> int:
    """Trainable parameters that one unit of LoRA rank costs on the `nn.Linear` modules named `targets`."""
    from torch import nn

    cost = 0
    for name, module in base.named_modules():
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            cost += module.in_features + module.out_features
    if cost == 0:
        raise ValueError(f"No nn.Linear named {targets} in the base model.")
    return cost


def closest_rank(target: int, cost: int) -> int:
    """LoRA rank whose count `rank * cost` is closest to `target` (the smaller rank on a tie)."""
    low = max(1, target // cost)
    return min((low, low + 1), key=lambda r: (abs(r * cost - target), r))


@dataclass
class Method:
    name: str
    description: str
    model: object
    optimizer: object
    method_params: int
    head_params: int
    details: dict = field(default_factory=dict)
    times_ms: list[float] = field(default_factory=list)
    round_times_ms: list[list[float]] = field(default_factory=list)


def build_method(name: str, args: argparse.Namespace, lora_rank: int | None = None):
    """Return `(model, description, details)` for method `name`, on a freshly seeded base."""
    import torch
    from peft import LoraConfig, get_peft_model

    pack = _import_pack()
    base = build_base(args.seed)
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
    sizes = [layer["sizes"] for layer in plan["layers"]]
    description = f"design space preset={preset}"
    details = {
        "preset": preset,
        "target": report.target,
        "base_params": report.base_params,
        "realised": report.realised,
        "per_strategy": report.per_strategy,
        "sizes_per_layer": sizes,
    }
    return model, description, details


def make_optimizer(model, lr: float):
    import torch

    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)


def train_step(model, optimizer, batch: dict) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()


def timed_step(model, optimizer, batch: dict) -> float:
    start = time.perf_counter()
    train_step(model, optimizer, batch)
    return (time.perf_counter() - start) * 1e3


# ---------------------------------------------------------------------------------------------------------------
# timing


def steps_per_round(steps: int, rounds: int) -> list[int]:
    return [steps // rounds + (1 if i < steps % rounds else 0) for i in range(rounds)]


def run_rounds(methods: list[Method], batch: dict, args: argparse.Namespace) -> None:
    from tqdm.auto import tqdm

    for method in methods:
        method.model.train()
        for _ in range(args.warmup):
            train_step(method.model, method.optimizer, batch)
    shares = steps_per_round(args.steps, args.rounds)
    bar = tqdm(total=args.rounds, desc="rounds", unit="round", disable=args.no_progress, file=sys.stderr)
    for round_index, share in enumerate(shares):
        shift = round_index % len(methods)
        order = methods[shift:] + methods[:shift]
        for method in order:
            bar.set_postfix_str(method.name)
            gc.collect()
            for _ in range(args.round_warmup):
                train_step(method.model, method.optimizer, batch)
            times = [timed_step(method.model, method.optimizer, batch) for _ in range(share)]
            method.round_times_ms.append(times)
            method.times_ms.extend(times)
        bar.update(1)
    bar.close()


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarise(method: Method, baseline: Method) -> dict:
    median = statistics.median(method.times_ms)
    round_medians = [statistics.median(t) for t in method.round_times_ms]
    paired = [
        statistics.median(mine) / statistics.median(ref)
        for mine, ref in zip(method.round_times_ms, baseline.round_times_ms)
    ]
    return {
        "method": method.name,
        "description": method.description,
        "method_params": method.method_params,
        "head_params": method.head_params,
        "details": method.details,
        "steps": len(method.times_ms),
        "median_ms": median,
        "min_ms": min(method.times_ms),
        "mean_ms": statistics.fmean(method.times_ms),
        "p10_ms": quantile(method.times_ms, 0.1),
        "p90_ms": quantile(method.times_ms, 0.9),
        "round_medians_ms": round_medians,
        "ratio": median / statistics.median(baseline.times_ms),
        "paired_ratio_median": statistics.median(paired),
        "paired_ratio_min": min(paired),
        "paired_ratio_max": max(paired),
        "times_ms": method.times_ms,
        "round_times_ms": method.round_times_ms,
    }


# ---------------------------------------------------------------------------------------------------------------
# peak memory: one fresh process per method


def _proc_status_mib(field_name: str) -> float | None:
    """A `kB` field of `/proc/self/status` (`VmRSS`, `VmHWM`) in MiB; `None` off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB.

    `VmHWM` belongs to the process's own address space; `ru_maxrss` is the fallback off Linux (on Linux it survives
    `execve`, so a spawned child would report its parent's peak).
    """
    peak = _proc_status_mib("VmHWM")
    if peak is not None:
        return peak
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _reset_peak_rss() -> bool:
    """Reset `VmHWM` to the current RSS (Linux >= 4.0); `False` where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _memory_worker(name: str, args: argparse.Namespace, lora_rank: int | None, queue) -> None:
    import torch

    _quiet_warnings()
    torch.set_num_threads(args.threads)
    model, _, _ = build_method(name, args, lora_rank)
    optimizer = make_optimizer(model, args.lr)
    batch = make_batch(args.batch_size, args.seq_len, args.seed)
    model.train()
    gc.collect()
    setup_peak = _peak_rss_mib()
    # growth of the peak over the training steps, from the RSS at their start when the peak can be reset
    start = _proc_status_mib("VmRSS") if _reset_peak_rss() else setup_peak
    for _ in range(2):
        train_step(model, optimizer, batch)
    steps_peak = _peak_rss_mib()
    queue.put((max(setup_peak, steps_peak), steps_peak - start))


def measure_memory(names: list[str], args: argparse.Namespace, lora_rank: int) -> dict[str, tuple[float, float]]:
    """`{method: (peak RSS MiB, growth of the peak during training steps MiB)}`, each from a fresh process."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    results = {}
    for name in names:
        queue = context.Queue()
        process = context.Process(target=_memory_worker, args=(name, args, lora_rank, queue))
        process.start()
        try:
            results[name] = queue.get(timeout=600)
        finally:
            process.join(timeout=60)
    return results


# ---------------------------------------------------------------------------------------------------------------
# profiling


def profile_methods(methods: list[Method], batch: dict, row_limit: int = 15) -> dict[str, str]:
    from torch.profiler import ProfilerActivity, profile

    tables = {}
    for method in methods:
        train_step(method.model, method.optimizer, batch)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            train_step(method.model, method.optimizer, batch)
        tables[method.name] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=row_limit)
    return tables


# ---------------------------------------------------------------------------------------------------------------
# output


def environment(args: argparse.Namespace) -> dict:
    import peft
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "peft": peft.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "requested_threads": args.threads,
    }


def _load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def format_table(rows: list[dict], memory: dict | None) -> str:
    header = (
        f"{'method':<10} {'trainable':>9} {'+head':>5} {'median ms':>9} {'min ms':>8} {'p10-p90 ms':>15} "
        f"{'round medians':>15} {'x LoRA':>6} {'paired x LoRA':>19}"
    )
    if memory:
        header += f" {'peak RSS':>9} {'step +RSS':>9}"
    lines = [header, "-" * len(header)]
    for row in rows:
        line = (
            f"{row['method']:<10} {row['method_params']:>9,} {row['head_params']:>5} {row['median_ms']:>9.1f} "
            f"{row['min_ms']:>8.1f} {row['p10_ms']:>7.1f}-{row['p90_ms']:<7.1f} "
            f"{min(row['round_medians_ms']):>7.1f}-{max(row['round_medians_ms']):<7.1f} {row['ratio']:>6.3f} "
            f"{row['paired_ratio_median']:>6.3f} ({row['paired_ratio_min']:.3f}-{row['paired_ratio_max']:.3f})"
        )
        if memory and row["method"] in memory:
            peak, growth = memory[row["method"]]
            line += f" {peak:>5.0f} MiB {growth:>5.0f} MiB"
        lines.append(line)
    return "\n".join(lines)


def write_json(path: Path, payload: dict) -> None:
    path = path.expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(payload, stream, indent=2)
            stream.write("\n")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    _quiet_warnings()
    torch.set_num_threads(args.threads)
    _import_pack()

    # S4 first: its realised count fixes the LoRA rank
    s4_model, s4_description, s4_details = build_method("s4", args)
    s4_params, s4_head = method_params(s4_model)
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
    print(
        f"Step = zero_grad + forward + backward + AdamW; batch {args.batch_size} x {args.seq_len}; "
        f"{args.threads} threads; {args.warmup} warm-up + {args.rounds} rounds x ({args.round_warmup} untimed + "
        f"{'/'.join(map(str, sorted(set(steps_per_round(args.steps, args.rounds)), reverse=True)))} timed) steps "
        f"per method = {args.steps} timed steps"
    )
    batch = make_batch(args.batch_size, args.seq_len, args.seed)
    load_before = _load_average()
    run_rounds(methods, batch, args)
    load_after = _load_average()
    rows = [summarise(m, baseline) for m in methods]

    profiles = profile_methods([s4, baseline], batch) if args.profile else None

    memory = None
    if not args.no_memory:
        for method in methods:  # free the timing models before the memory processes run
            method.model = method.optimizer = None
        del s4_model
        gc.collect()
        memory = measure_memory(args.methods, args, rank)
        for row in rows:
            row["peak_rss_mib"], row["step_rss_growth_mib"] = memory[row["method"]]

    print()
    print(format_table(rows, memory))
    s4_row = next(r for r in rows if r["method"] == "s4")
    met = s4_row["ratio"] <= args.target_ratio
    print(
        f"\nS4 / PEFT LoRA median step time: {s4_row['ratio']:.3f} (paired per round {s4_row['paired_ratio_min']:.3f}-"
        f"{s4_row['paired_ratio_max']:.3f}); target <= {args.target_ratio:g}: {'MET' if met else 'NOT MET'}"
    )
    if load_before is not None:
        print(
            f"load average (1/5/15 min) before the rounds {'/'.join(f'{x:.2f}' for x in load_before)}, after "
            f"{'/'.join(f'{x:.2f}' for x in load_after)} on {os.cpu_count()} CPUs (above {args.threads} means other "
            "processes competed for the cores)"
        )
    if memory:
        print("peak RSS: ru_maxrss of a fresh process per method; step +RSS: its growth over the training steps")
    if profiles:
        for name, table in profiles.items():
            print(f"\ntorch.profiler, one step of {name}, by self CPU time:\n{table}")

    if args.json is not None:
        payload = {
            "benchmark": "designspace_step_time",
            "command": " ".join([Path(sys.argv[0]).as_posix(), *(sys.argv[1:] if argv is None else argv)]),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "environment": {**environment(args), "load_average_before": load_before, "load_average_after": load_after},
            "model": {**MODEL_SHAPE, "num_labels": 2, "base_params": s4_details["base_params"]},
            "lora_rank": rank,
            "lora_params_per_rank": cost,
            "results": rows,
            "target": {"ratio": args.target_ratio, "s4_ratio": s4_row["ratio"], "met": met},
            "profiles": profiles,
        }
        write_json(args.json, payload)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
