"""Timing and memory machinery shared by the benchmarks under `bench/`.

- `add_timing_arguments` / `check_timing_arguments`: the command-line options of the rotating-round timing.
- `train_step`: one step = `zero_grad` + forward (the model returns `.loss`) + `backward` + `optimizer.step()`.
- `ForeignLoad`: cores that *other* processes used over an interval (Linux `/proc/stat` busy time minus this
  process's CPU time), to tell clean timed steps from contended ones on a shared machine.
- `run_rounds` / `summarise`: warm-up, then rounds in which every method runs a few timed steps, the method order
  rotating, until every method has enough clean steps; medians, spreads and ratios to a baseline method, both sides
  of a ratio over the same selection of steps. `verdict`: a target check that refuses to judge contended ratios.
- `measure_memory`: peak RSS per method, each in a fresh process (`VmHWM`, reset through `/proc/self/clear_refs`
  after the setup so that the training steps' own peak is seen); a process that fails is recorded, not waited for.
- `profile_methods`, `environment`, `write_json`: profiler tables, versions and machine facts, atomic JSON output.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import math
import os
import platform
import queue as queue_module
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


def option(name: str) -> str:
    """The command-line spelling of an `args` attribute: `round_steps` -> `--round-steps`."""
    return "--" + name.replace("_", "-")


def check_timing_arguments(
    parser: argparse.ArgumentParser, args: argparse.Namespace, positive: tuple[str, ...] = ()
) -> None:
    """Validate the options of `add_timing_arguments` and the bench's own counts named in `positive` (each must be
    >= 1), and fill in `args.max_rounds`."""
    for name in ("steps", "round_steps", *positive):
        if getattr(args, name) < 1:
            parser.error(f"{option(name)} must be an int >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be an int >= 0, got {args.warmup}")
    if not (math.isfinite(args.wait_quiet) and args.wait_quiet >= 0):
        parser.error(f"--wait-quiet must be a finite number of seconds >= 0, got {args.wait_quiet}")
    if not (math.isfinite(args.max_foreign_load) and args.max_foreign_load > 0):
        parser.error(f"--max-foreign-load must be a finite number of cores > 0, got {args.max_foreign_load}")
    base_rounds = math.ceil(args.steps / args.round_steps)
    if args.max_rounds is None:
        args.max_rounds = base_rounds if args.no_filter else 4 * base_rounds
    if args.max_rounds < base_rounds:
        parser.error(f"--max-rounds must be >= ceil(steps / round-steps) = {base_rounds}, got {args.max_rounds}")


def check_positive(parser: argparse.ArgumentParser, args: argparse.Namespace, names: tuple[str, ...]) -> None:
    """Each option of `names` must be a finite number > 0."""
    for name in names:
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            parser.error(f"{option(name)} must be a finite number > 0, got {value}")


def check_json_path(parser: argparse.ArgumentParser, path: Path | None) -> None:
    """`--json` must name a file (not a folder) in an existing, writable folder: checked before the run, whose
    results would otherwise be lost at the final write."""
    if path is None:
        return
    path = Path(path).expanduser()
    folder = path.resolve().parent
    if path.is_dir():
        parser.error(f"--json must be a file path, got {str(path)!r}, which is a folder")
    if not folder.is_dir():
        parser.error(f"--json must be in an existing folder, got {str(path)!r} ({str(folder)!r} does not exist)")
    if not os.access(folder, os.W_OK | os.X_OK):
        parser.error(f"--json must be in a writable folder, got {str(path)!r} ({str(folder)!r} is not writable)")


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

    def short_of_clean(self) -> bool:
        """Fewer than `MIN_CLEAN` clean steps (and not every step clean)."""
        return len(self.clean_steps()) < min(MIN_CLEAN, len(self.steps))


def selection(method: Method, baseline: Method) -> str:
    """Which steps a ratio of `method` to `baseline` uses, the same on both sides: `"clean"` unless either is short
    of clean steps, then `"all"` (a clean median over a contended one would be no ratio of speeds)."""
    return "all" if method.short_of_clean() or baseline.short_of_clean() else "clean"


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
    run = {"rounds": rounds, "filtering": filtering, "waited_s": waited}
    # timing blocks of steps per reading would lift the filter's resolution; short steps are flagged instead
    warning = short_step_warning(methods, args.max_foreign_load) if filtering else None
    if warning is not None:
        run["warning"] = warning
    return run


def filter_resolution_ms(threshold: float, cpus: int | None = None, tick_s: float | None = None) -> float:
    """The shortest step whose foreign load the filter can judge against `threshold` cores.

    `/proc/stat` counts whole clock ticks per CPU while `process_time` is exact, so one reading is off by up to about
    `cpus` ticks: over a step of T seconds that is `cpus * tick / T` cores, above `threshold` when T is shorter.
    """
    cpus = cpus or os.cpu_count() or 1
    tick_s = tick_s or 1 / os.sysconf("SC_CLK_TCK")
    return 1e3 * cpus * tick_s / threshold


def short_step_warning(methods: list[Method], threshold: float, cpus: int | None = None) -> str | None:
    """A warning naming the methods whose median step is too short for the contention filter, or `None`."""
    limit = filter_resolution_ms(threshold, cpus)
    short = [m.name for m in methods if m.steps and statistics.median(s.wall_ms for s in m.steps) < limit]
    if not short:
        return None
    return (
        f"steps of {', '.join(short)} are shorter than the contention filter can judge (~{limit:.0f} ms = CPUs x "
        f"clock tick / --max-foreign-load {threshold:g}): their clean/contended labels are mostly tick noise"
    )


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarise(method: Method, baseline: Method, filtering: bool) -> dict:
    """Statistics of `method` and its ratios to `baseline`, both over the steps `selection` picks.

    `filtering`: whether the run labelled steps clean or contended (`run_rounds`' `filtering`); without it no step
    is known to be contended, and no row or ratio is flagged.
    """
    chosen = selection(method, baseline)
    used = method.clean_steps() if chosen == "clean" else method.steps
    base_used = baseline.clean_steps() if chosen == "clean" else baseline.steps
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
        "contended": filtering and method.short_of_clean(),
        "selection": chosen,
        "ratio_contended": filtering and chosen == "all",
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


def verdict(row: dict, limit: float) -> dict:
    """`{"value", "limit", "met", "judged"}` of the target `row["ratio"] <= limit`; a ratio over contended steps is
    not judged (`met` None), since contention can move it either way."""
    judged = not row["ratio_contended"]
    return {
        "value": row["ratio"],
        "limit": limit,
        "met": row["ratio"] <= limit if judged else None,
        "judged": judged,
    }


def verdict_text(found: dict) -> str:
    if not found["judged"]:
        return "not judged: contended"
    return "MET" if found["met"] else "NOT MET"


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


class MemoryJobError(RuntimeError):
    """A memory process died, or ran past its time, before reporting."""


def measure_memory(
    setup: Callable,
    jobs: dict[str, tuple],
    threads: int,
    steps: int = 2,
    env: dict[str, str] | None = None,
    timeout: float = 600.0,
) -> dict[str, dict]:
    """Peak memory per job, one fresh process each: `{name: {"peak_rss_mib", "step_rss_growth_mib"}}` (the growth
    of the peak during `steps` training steps), the fields of a result row.

    `setup` must be a module-level function (it is pickled by reference into a spawned process); `jobs` maps a name
    to its `setup` arguments. `env`: extra environment variables of the child processes (e.g. glibc `MALLOC_*`
    tunables, read when a process starts). A job whose process fails (an exception, an OOM kill) or runs past
    `timeout` seconds gets `None` figures and a `memory_error`, so that the timing results survive it.
    """
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    results = {}
    for name, setup_args in jobs.items():
        try:
            peak, growth = _memory_job(context, setup, setup_args, threads, steps, env or {}, timeout)
        except MemoryJobError as error:
            print(f"memory of {name}: {error}; recorded as unavailable", file=sys.stderr)
            results[name] = {"peak_rss_mib": None, "step_rss_growth_mib": None, "memory_error": str(error)}
        else:
            results[name] = {"peak_rss_mib": peak, "step_rss_growth_mib": growth}
    return results


def _memory_job(
    context, setup: Callable, setup_args: tuple, threads: int, steps: int, env: dict[str, str], timeout: float
) -> tuple[float, float]:
    queue = context.Queue()
    process = context.Process(target=memory_worker, args=(setup, setup_args, threads, steps, queue))
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        process.start()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    deadline = time.monotonic() + timeout
    try:
        while True:
            alive = process.is_alive()  # read before the get: a result put just before exiting is still taken
            try:
                return queue.get(timeout=1.0)
            except queue_module.Empty:
                pass
            if not alive:
                process.join()
                raise MemoryJobError(f"the memory process exited with code {process.exitcode} before reporting")
            if time.monotonic() > deadline:
                raise MemoryJobError(f"the memory process reported nothing in {timeout:g} s and was stopped")
    finally:
        if process.is_alive():
            process.terminate()
        process.join(timeout=60)


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
