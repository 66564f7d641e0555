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
  CPU time of the process per step (`time.process_time`, all threads).

Peak RSS is measured afterwards, one fresh process per method (`--no-memory` skips it).

Example:

```
python bench/designspace_step_time.py --json bench/results/designspace_step_time.json
```
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BASELINE = "peft-lora"
DS_PRESETS = ("adapter", "prefix", "bitfit", "lora")
ALL_METHODS = (BASELINE, "s4", *(f"ds-{p}" for p in DS_PRESETS))
MIN_CLEAN = 3
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
        "--lora-targets", nargs="+", default=["query", "value"], help="Module names that get PEFT LoRA."
    )
    parser.add_argument("--steps", type=int, default=20, help="Clean timed steps wanted per method.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps per method before the first round.")
    parser.add_argument("--round-steps", type=int, default=2, help="Timed steps per method in each round.")
    parser.add_argument(
        "--max-rounds",
        type=int,
        default=None,
        help="Most rounds to run while collecting clean steps (None: 4 x the rounds needed without contention).",
    )
    parser.add_argument(
        "--max-foreign-load",
        type=float,
        default=0.1,
        help="A timed step is clean when other processes used fewer cores than this meanwhile (Linux /proc/stat).",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=30.0,
        help="Before each block of timed steps, wait at most this many seconds for a quiet half-second (other "
        "processes under --max-foreign-load); 0 never waits.",
    )
    parser.add_argument(
        "--no-filter",
        action="store_true",
        help="Neither wait for quiet nor leave contended steps out: time exactly ceil(steps / round-steps) rounds.",
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
        help="After the timing, profile one step of S4 and one of PEFT LoRA with torch.profiler and print the top "
        "operators of each by self CPU time (also stored in the JSON).",
    )
    parser.add_argument(
        "--json", metavar="PATH", type=Path, default=None, help="Also write the results as JSON to PATH."
    )
    parser.add_argument("--no-progress", action="store_true", help="Hide the tqdm progress bar.")
    args = parser.parse_args(argv)
    for name in ("steps", "round_steps", "threads", "batch_size", "seq_len"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.wait_quiet < 0 or not args.max_foreign_load > 0:
        parser.error("--wait-quiet must be >= 0 and --max-foreign-load > 0")
    if not args.budget > 0 or (args.budget >= 1 and args.budget != int(args.budget)):
        parser.error("--budget must be a fraction in (0, 1) or a whole count >= 1")
    base_rounds = math.ceil(args.steps / args.round_steps)
    if args.max_rounds is None:
        args.max_rounds = base_rounds if args.no_filter else 4 * base_rounds
    if args.max_rounds < base_rounds:
        parser.error(f"--max-rounds must be >= ceil(steps / round-steps) = {base_rounds}")
    args.methods = [m for m in ALL_METHODS if m in set(args.methods) | {BASELINE, "s4"}]
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
    return BertForSequenceClassification(BertConfig(**MODEL_SHAPE, num_labels=2))


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
    details = {
        "preset": preset,
        "target": report.target,
        "base_params": report.base_params,
        "realised": report.realised,
        "per_strategy": report.per_strategy,
        "sizes_per_layer": [layer["sizes"] for layer in plan["layers"]],
    }
    return model, f"design space preset={preset}", details


def make_optimizer(model, lr: float):
    import torch

    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)


def train_step(model, optimizer, batch: dict) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()


# ---------------------------------------------------------------------------------------------------------------
# contention: CPU time that other processes use


def _machine_busy_seconds() -> float | None:
    """Busy CPU seconds of the whole machine since boot, all cores summed (Linux `/proc/stat`); `None` elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:9]] + [0] * (9 - len(fields))
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class ForeignLoad:
    """Cores used by other processes (and the hypervisor's steal) over an interval: machine busy minus our CPU."""

    def __init__(self) -> None:
        self.available = _machine_busy_seconds() is not None

    def start(self) -> tuple[float, float, float]:
        return _machine_busy_seconds() or 0.0, time.process_time(), time.perf_counter()

    def stop(self, mark: tuple[float, float, float]) -> float:
        if not self.available:
            return 0.0
        busy, cpu, wall = mark
        elapsed = time.perf_counter() - wall
        foreign = (_machine_busy_seconds() - busy) - (time.process_time() - cpu)
        return max(0.0, foreign / elapsed) if elapsed > 0 else 0.0

    def wait_quiet(self, threshold: float, timeout: float, window: float = 0.5) -> float:
        """Sleep in `window`s until other processes use fewer than `threshold` cores, at most `timeout` s."""
        if not self.available or timeout <= 0:
            return 0.0
        start = time.perf_counter()
        while True:
            mark = self.start()
            time.sleep(window)
            if self.stop(mark) < threshold or time.perf_counter() - start >= timeout:
                return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------------------------
# timing


@dataclass
class Step:
    round: int
    wall_ms: float
    cpu_ms: float
    foreign_cores: float
    clean: bool


@dataclass
class Method:
    name: str
    description: str
    model: object
    optimizer: object
    method_params: int
    head_params: int
    details: dict = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)

    def clean_steps(self) -> list[Step]:
        return [s for s in self.steps if s.clean]

    def used_steps(self) -> list[Step]:
        """The clean steps, or every step when fewer than `MIN_CLEAN` are clean."""
        clean = self.clean_steps()
        return clean if len(clean) >= MIN_CLEAN else self.steps


def timed_step(method: Method, batch: dict, load: ForeignLoad, round_index: int, threshold: float | None) -> Step:
    mark = load.start()
    cpu_start = time.process_time()
    start = time.perf_counter()
    train_step(method.model, method.optimizer, batch)
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    foreign = load.stop(mark)
    clean = threshold is None or foreign < threshold
    return Step(round_index, wall * 1e3, cpu * 1e3, foreign, clean)


def run_rounds(methods: list[Method], batch: dict, args: argparse.Namespace, load: ForeignLoad) -> dict:
    """Warm up, then time rotating rounds until every method has `args.steps` clean steps; return run facts."""
    from tqdm.auto import tqdm

    filtering = not args.no_filter and load.available
    threshold = args.max_foreign_load if filtering else None
    for method in methods:
        method.model.train()
        for _ in range(args.warmup):
            train_step(method.model, method.optimizer, batch)

    def progress() -> int:
        return sum(min(args.steps, len(m.clean_steps())) for m in methods)

    waited = 0.0
    rounds = 0
    bar = tqdm(total=args.steps * len(methods), desc="clean steps", disable=args.no_progress, file=sys.stderr)
    while rounds < args.max_rounds and progress() < args.steps * len(methods):
        shift = rounds % len(methods)
        for method in methods[shift:] + methods[:shift]:
            bar.set_postfix_str(f"round {rounds + 1}, {method.name}")
            gc.collect()
            if filtering:
                waited += load.wait_quiet(args.max_foreign_load, args.wait_quiet)
            for _ in range(args.round_steps):
                method.steps.append(timed_step(method, batch, load, rounds, threshold))
            bar.update(progress() - bar.n)
        rounds += 1
    bar.close()
    return {"rounds": rounds, "filtering": filtering, "waited_s": waited}


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarise(method: Method, baseline: Method) -> dict:
    used, base_used = method.used_steps(), baseline.used_steps()
    walls = [s.wall_ms for s in used]
    median = statistics.median(walls)
    base_median = statistics.median(s.wall_ms for s in base_used)
    paired = []
    for round_index in sorted({s.round for s in used}):
        mine = [s.wall_ms for s in used if s.round == round_index]
        ref = [s.wall_ms for s in base_used if s.round == round_index]
        if mine and ref:
            paired.append(statistics.median(mine) / statistics.median(ref))
    return {
        "method": method.name,
        "description": method.description,
        "method_params": method.method_params,
        "head_params": method.head_params,
        "details": method.details,
        "steps_total": len(method.steps),
        "steps_clean": len(method.clean_steps()),
        "contended": len(method.clean_steps()) < MIN_CLEAN,
        "median_ms": median,
        "min_ms": min(walls),
        "mean_ms": statistics.fmean(walls),
        "p10_ms": quantile(walls, 0.1),
        "p90_ms": quantile(walls, 0.9),
        "ratio": median / base_median,
        "min_ratio": min(walls) / min(s.wall_ms for s in base_used),
        "paired_ratio_median": statistics.median(paired) if paired else math.nan,
        "paired_ratio_min": min(paired) if paired else math.nan,
        "paired_ratio_max": max(paired) if paired else math.nan,
        "paired_rounds": len(paired),
        "cpu_median_ms": statistics.median(s.cpu_ms for s in used),
        "cpu_ratio": statistics.median(s.cpu_ms for s in used) / statistics.median(s.cpu_ms for s in base_used),
        "all_steps_median_ms": statistics.median(s.wall_ms for s in method.steps),
        "steps": [asdict(s) for s in method.steps],
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
    """`{method: (peak RSS MiB, growth of the peak during 2 training steps MiB)}`, each from a fresh process."""
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


def profile_methods(methods: list[Method], batch: dict, row_limit: int = 20) -> dict[str, str]:
    from torch.profiler import ProfilerActivity, profile

    tables = {}
    for method in methods:
        train_step(method.model, method.optimizer, batch)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            train_step(method.model, method.optimizer, batch)
        tables[method.name] = prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=row_limit, max_name_column_width=40, max_shapes_column_width=60
        )
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
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)  # mkstemp creates the file private
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
    load_before = _load_average()
    started = time.perf_counter()
    run = run_rounds(methods, batch, args, load)
    run["duration_s"] = time.perf_counter() - started
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
        f"\nS4 / PEFT LoRA median step time: {s4_row['ratio']:.3f} "
        f"(paired per round {s4_row['paired_ratio_median']:.3f}, "
        f"range {s4_row['paired_ratio_min']:.3f}-{s4_row['paired_ratio_max']:.3f}; mins {s4_row['min_ratio']:.3f}; "
        f"CPU time {s4_row['cpu_ratio']:.3f}); target <= {args.target_ratio:g}: {'MET' if met else 'NOT MET'}"
    )
    print(
        f"{run['rounds']} rounds in {run['duration_s']:.0f} s"
        + (f", {run['waited_s']:.0f} s of it in quiet checks before the blocks (>= 0.5 s each)" if filtering else "")
        + (
            f"; clean = timed steps during which other processes used < {args.max_foreign_load:g} cores "
            f"('!': fewer than {MIN_CLEAN} clean, all steps used)"
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
                **environment(args),
                "load_average_before": load_before,
                "load_average_after": load_after,
            },
            "model": {**MODEL_SHAPE, "num_labels": 2, "base_params": s4_details["base_params"]},
            "lora_rank": rank,
            "lora_params_per_rank": cost,
            "run": run,
            "results": rows,
            "target": {"ratio": args.target_ratio, "s4_ratio": s4_row["ratio"], "met": met},
            "profiles": profiles,
        }
        write_json(args.json, payload)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
