"""Timing and memory machinery shared by the benchmarks under `bench/`.

- `add_timing_arguments` / `check_timing_arguments`: the command-line options of the rotating-round timing.
- `train_step`: one step = `zero_grad` + forward (the model returns `.loss`) + `backward` + `optimizer.step()`.
- `ForeignLoad`: cores that *other* processes used over an interval (Linux `/proc/stat` busy time minus this
  process's CPU time), to tell clean timed steps from contended ones on a shared machine.
- `run_rounds` / `summarise`: warm-up, then rounds in which every method runs a few timed steps, the method order
  rotating, until every method has enough clean steps; medians, spreads and ratios to a baseline method.
- `measure_memory`: peak RSS per method, each in a fresh process (`VmHWM`, reset through `/proc/self/clear_refs`
  after the setup so that the training steps' own peak is seen).
- `profile_methods`, `environment`, `write_json`: profiler tables, versions and machine facts, atomic JSON output.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MIN_CLEAN = 3


# ---------------------------------------------------------------------------------------------------------------
# command line


def add_timing_arguments(parser: argparse.ArgumentParser, steps: int = 20) -> None:
    """Add `--steps`, `--warmup`, `--round-steps`, `--max-rounds`, `--max-foreign-load`, `--wait-quiet`,
    `--no-filter` (the rotating-round timing with the contention filter)."""
    parser.add_argument("--steps", type=int, default=steps, help="Clean timed steps wanted per method.")
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


def check_timing_arguments(
    parser: argparse.ArgumentParser, args: argparse.Namespace, positive: tuple[str, ...] = ()
) -> None:
    """Validate the options of `add_timing_arguments` and the bench's own counts named in `positive` (each must be
    >= 1), and fill in `args.max_rounds`."""
    for name in ("steps", "round_steps", *positive):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.wait_quiet < 0 or not args.max_foreign_load > 0:
        parser.error("--wait-quiet must be >= 0 and --max-foreign-load > 0")
    base_rounds = math.ceil(args.steps / args.round_steps)
    if args.max_rounds is None:
        args.max_rounds = base_rounds if args.no_filter else 4 * base_rounds
    if args.max_rounds < base_rounds:
        parser.error(f"--max-rounds must be >= ceil(steps / round-steps) = {base_rounds}")


# ---------------------------------------------------------------------------------------------------------------
# the pack and the training step


def import_pack():
    """Import `peft_designspace`, from the repository checkout when it is not installed."""
    if importlib.util.find_spec("peft_designspace") is None:
        sys.path.insert(0, str(REPO_ROOT))
    import peft_designspace

    return peft_designspace


def make_optimizer(model, lr: float, fused: bool = False):
    """AdamW over the trainable parameters; `fused=True` is `Trainer`'s default (`optim="adamw_torch_fused"`)."""
    import torch

    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, fused=fused or None)


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
    step: Callable[[dict], None] | None = None  # a custom training step (default: `train_step`)

    def run_step(self, batch: dict) -> None:
        if self.step is not None:
            self.step(batch)
        else:
            train_step(self.model, self.optimizer, batch)

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
    method.run_step(batch)
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
            method.run_step(batch)

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


def memory_worker(setup: Callable, setup_args: tuple, threads: int, steps: int, queue) -> None:
    """In a fresh process: `setup(*setup_args)` -> `(model, optimizer, batch)`, then `steps` training steps.

    Puts `(peak RSS MiB, growth of the peak during the steps MiB)` on `queue`; the growth is measured from the RSS at
    the start of the steps when the peak can be reset (Linux), else from the setup's peak.
    """
    import torch

    torch.set_num_threads(threads)
    built = setup(*setup_args)  # (model, optimizer, batch) or (model, optimizer, batch, custom step)
    model, optimizer, batch = built[:3]
    step = built[3] if len(built) > 3 else (lambda b: train_step(model, optimizer, b))
    model.train()
    gc.collect()
    setup_peak = _peak_rss_mib()
    start = _proc_status_mib("VmRSS") if _reset_peak_rss() else setup_peak
    for _ in range(steps):
        step(batch)
    steps_peak = _peak_rss_mib()
    queue.put((max(setup_peak, steps_peak), steps_peak - start))


def measure_memory(
    setup: Callable, jobs: dict[str, tuple], threads: int, steps: int = 2, env: dict[str, str] | None = None
) -> dict[str, tuple[float, float]]:
    """`{name: (peak RSS MiB, growth of the peak during `steps` training steps MiB)}`, one fresh process per job.

    `setup` must be a module-level function (it is pickled by reference into a spawned process); `jobs` maps a name
    to its `setup` arguments. `env`: extra environment variables of the child processes (e.g. glibc `MALLOC_*`
    tunables, read when a process starts).
    """
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    results = {}
    for name, setup_args in jobs.items():
        queue = context.Queue()
        process = context.Process(target=memory_worker, args=(setup, setup_args, threads, steps, queue))
        saved = {key: os.environ.get(key) for key in env or {}}
        os.environ.update(env or {})
        try:
            process.start()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
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


def environment() -> dict:
    """Versions, machine, thread count and the git revision of the checkout."""
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
        **git_revision(),
    }


def git_revision() -> dict:
    """`{"git_revision": HEAD, "git_dirty": whether the checkout has changes}`; empty outside a git checkout."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_revision": head, "git_dirty": bool(status.strip())}


def load_average() -> tuple[float, float, float] | None:
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


def write_json(path: Path, payload: dict) -> None:
    import_pack()
    from peft_designspace._io import write_json_atomic

    write_json_atomic(payload, Path(path).expanduser().resolve())
