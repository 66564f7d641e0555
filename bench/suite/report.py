"""Regenerate `docs/benchmarks.md` (and its PNG plots) from the suite's result JSON files.

```
python bench/suite/report.py                                   # bench/suite/results -> docs/benchmarks.md
python bench/suite/report.py --results-dir /tmp/r --output /tmp/r/benchmarks.md
```

For each (backbone, task, experiment) the report takes the runs of one settings set (those of its newest finished run,
`plan.settings_of`), then the runs at the learning rate the sweep chose (the best final validation metric of the
sweep seed, ties to the smaller rate), and gives the dev metric as mean ± sample std over seeds. Speed and memory are
medians over those runs, with ratios to PEFT LoRA at the same budget (LoRA at 0.5% for unbudgeted methods). A method
"loses" on speed or memory when its ratio, as the table shows it (two decimals), is above 1.10.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [p for p in (str(HERE), str(ROOT)) if p not in sys.path]  # plan and the pack, as in run.py
RESULTS_DIR = HERE / "results"
OUTPUT = ROOT / "docs" / "benchmarks.md"
TASK_ORDER = ("SST-2", "RTE", "CoLA")
BASELINE_FAMILIES = ("lora", "prefix", "shira", "supertuning", "beft")
METRIC_NAMES = {"accuracy": "accuracy", "matthews_correlation": "MCC"}
LOSS_RATIO = 1.10  # a speed or memory ratio to LoRA above this, as shown in the table, is listed as a loss


@dataclass
class Row:
    """One experiment on one (backbone, task): its runs at the chosen learning rate."""

    backbone: str
    task: str
    experiment: str
    info: dict
    runs: list[dict] = field(default_factory=list)
    sweep: dict[float, float] = field(default_factory=dict)  # learning rate -> validation metric (first seed)
    skipped: str | None = None
    errors: int = 0
    seconds: float = 0.0  # wall time of all its runs (sweep included)

    @property
    def ours(self) -> bool:
        return bool(self.info.get("ours"))

    @property
    def family(self) -> str:
        return self.info.get("family") or self.experiment.split("/")[0]

    @property
    def budget(self) -> float | None:
        return self.info.get("budget")

    def values(self, key: str) -> list[float]:
        return [r["train_info"][key] for r in self.runs if r["train_info"].get(key) is not None]

    def mean_std(self, key: str) -> tuple[float, float, int]:
        values = self.values(key)
        if not values:
            return math.nan, math.nan, 0
        std = statistics.stdev(values) if len(values) > 1 else math.nan
        return statistics.fmean(values), std, len(values)

    def median(self, key: str) -> float:
        values = self.values(key)
        return statistics.median(values) if values else math.nan


def load_rows(results_dir: Path) -> dict[tuple[str, str], list[Row]]:
    """Rows grouped by (backbone, task), from every result file under `results_dir`."""
    runs: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    skipped: dict[tuple[str, str, str], dict] = {}
    for path in sorted(results_dir.rglob("*.json")):
        if "_s3pet_structures" in path.parts:
            continue
        try:
            result = json.loads(path.read_text())
        except json.JSONDecodeError:
            print(f"warning: {path} is not valid JSON; left out", file=sys.stderr)
            continue
        info = result.get("run_info", {})
        key = (info.get("backbone"), info.get("task"), info.get("experiment"))
        if None in key:
            continue
        if info.get("status") == "skipped":
            skipped[key] = result
        else:
            runs[key].append(result)
    grouped: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for key in sorted(set(runs) | set(skipped)):
        backbone, task, experiment = key
        finished = any(r["run_info"]["status"] == "ok" for r in runs[key])
        if key in skipped and not finished:  # a skipped record older than finished runs is stale
            info = skipped[key]["run_info"]
            grouped[(backbone, task)].append(Row(backbone, task, experiment, info, skipped=info.get("reason")))
            continue
        grouped[(backbone, task)].append(make_row(key, one_settings_set(key, runs[key])))
    return grouped


def run_settings(result: dict) -> str:
    """The settings key (`plan.settings_key`) of a result, from what it records."""
    from plan import settings_key, settings_of

    info = result["run_info"]
    return settings_key(settings_of(info.get("training_params") or {}, info.get("config")))


def one_settings_set(key: tuple[str, str, str], results: list[dict]) -> list[dict]:
    """The results made with the settings of the newest finished one (of the newest one when none finished)."""
    ok = [r for r in results if r["run_info"]["status"] == "ok"]
    newest = max(ok or results, key=lambda r: r["run_info"].get("created_at") or "")
    wanted = run_settings(newest)
    kept = [r for r in results if run_settings(r) == wanted]
    if len(kept) < len(results):
        print(
            f"warning: {'/'.join(key)}: {len(results) - len(kept)} run(s) made with other settings than the newest "
            "finished run left out",
            file=sys.stderr,
        )
    return kept


def make_row(key: tuple[str, str, str], results: list[dict]) -> Row:
    """The row of one experiment: its runs at the learning rate its sweep chose."""
    ok = [r for r in results if r["run_info"]["status"] == "ok"]
    row = Row(*key, results[0]["run_info"], errors=len(results) - len(ok))
    row.seconds = sum(r["run_info"].get("total_time_s", 0.0) for r in results)
    sweep = [r for r in ok if r["run_info"].get("phase", "sweep") == "sweep"]
    first_seed = min((r["run_info"]["seed"] for r in sweep), default=None)
    row.sweep = {
        r["run_info"]["learning_rate"]: r["train_info"]["val_metric"]
        for r in sweep
        if r["run_info"]["seed"] == first_seed
    }
    chosen = max(row.sweep, key=lambda lr: (row.sweep[lr], -lr)) if row.sweep else None  # run.py's rule
    row.runs = [r for r in ok if r["run_info"]["learning_rate"] == chosen]
    if row.runs:
        row.info = row.runs[0]["run_info"]
    return row


# formatting
def fmt_metric(mean: float, std: float, n: int) -> str:
    if n == 0:
        return "–"
    return f"{mean:.4f}" if n == 1 or math.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def fmt_count(value: float) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{int(round(value)):,}"


def shown_ratio(value: float, reference: float) -> float:
    """`value / reference` rounded as the tables show it (nan when either is missing)."""
    if any(math.isnan(v) for v in (value, reference)) or reference == 0:
        return math.nan
    return round(value / reference, 2)


def fmt_ratio(value: float, reference: float) -> str:
    ratio = shown_ratio(value, reference)
    return "–" if math.isnan(ratio) else f"{ratio:.2f}×"


def budget_label(budget: float | None) -> str:
    return "–" if budget is None else f"{100 * budget:g}%"


def reference_lora(rows: list[Row], budget: float | None) -> Row | None:
    """PEFT LoRA at `budget` (at the largest budget for unbudgeted methods)."""
    loras = [r for r in rows if r.family == "lora" and r.runs]
    if not loras:
        return None
    same = [r for r in loras if r.budget == budget]
    return same[0] if same else max(loras, key=lambda r: r.budget or 0)


def sort_key(row: Row) -> tuple:
    return (-(row.budget or 1.0), row.ours, row.family, row.experiment)


def quality_table(rows: list[Row], metric: str) -> list[str]:
    name = METRIC_NAMES.get(metric, metric)
    lines = [
        f"| method | ours | budget | trainable params (% of backbone) | lr | dev {name} (mean ± std) | seeds | "
        f"val {name} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=sort_key):
        label = row.info.get("label", row.experiment)
        ours = "★" if row.ours else ""
        if row.skipped or not row.runs:
            reason = row.skipped or f"no finished run ({row.errors} failed)"
            lines.append(
                f"| {label} | {ours} | {budget_label(row.budget)} | – | – | not run: {reason[:160]} | 0 | – |"
            )
            continue
        params = row.median("trainable_params")
        share = params / row.info["backbone_params"] if row.info.get("backbone_params") else math.nan
        dev = fmt_metric(*row.mean_std("dev_metric"))
        val = fmt_metric(*row.mean_std("val_metric"))
        lines.append(
            f"| {label} | {ours} | {budget_label(row.budget)} | {fmt_count(params)} ({100 * share:.3f}%) | "
            f"{row.info['learning_rate']:.3g} | {dev} | {len(row.runs)} | {val} |"
        )
    return lines


def step_key(rows: list[Row]) -> str:
    """Process CPU time per step on CPU (robust to other jobs on the machine), wall time on GPU."""
    done = [r for r in rows if r.runs]
    cpu = done and done[0].runs[0]["meta_info"]["device"] == "cpu" and done[0].values("step_cpu_time_s")
    return "step_cpu_time_s" if cpu else "step_time_s"


def speed_table(rows: list[Row]) -> list[str]:
    key = step_key(rows)
    clock = "CPU" if key == "step_cpu_time_s" else "wall"
    lines = [
        f"| method | ours | budget | {clock} time per step (ms) | vs LoRA | train memory growth (MiB) | vs LoRA "
        "| of it from step 1 on (MiB) | adapter file |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=sort_key):
        if not row.runs:
            continue
        ref = reference_lora(rows, row.budget)
        step, memory = row.median(key), row.median("train_memory_growth_mib")
        ref_step = ref.median(key) if ref else math.nan
        ref_memory = ref.median("train_memory_growth_mib") if ref else math.nan
        steps_memory = row.median("steps_memory_growth_mib")  # absent from results made before it was recorded
        steps_text = "–" if math.isnan(steps_memory) else f"{steps_memory:.0f}"
        size = row.median("adapter_file_bytes")
        size_text = f"{size / 2**20:.2f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB"
        lines.append(
            f"| {row.info.get('label', row.experiment)} | {'★' if row.ours else ''} | {budget_label(row.budget)} | "
            f"{1000 * step:.0f} | {fmt_ratio(step, ref_step)} | {memory:.0f} | {fmt_ratio(memory, ref_memory)} | "
            f"{steps_text} | {size_text} |"
        )
    return lines


def losses(rows: list[Row]) -> list[str]:
    """Plain statements of where each of our methods falls behind the best PEFT method at the same budget."""
    means = {round(r.mean_std("dev_metric")[0], 6) for r in rows if r.runs}
    if len(means) == 1:
        return [
            f"- no signal: every finished method scores {means.pop():.4f} here (e.g. all predict one class), so "
            "this task says nothing about who wins at these settings; it needs longer training."
        ]
    out = []
    for row in sorted(rows, key=sort_key):
        if not row.ours:
            continue
        if row.skipped or not row.runs:
            out.append(f"- {row.info.get('label', row.experiment)}: did not run ({(row.skipped or 'failed')[:200]}).")
            continue
        peers = [r for r in rows if not r.ours and r.runs and r.family in BASELINE_FAMILIES and r.budget == row.budget]
        if not peers:
            continue
        best = max(peers, key=lambda r: r.mean_std("dev_metric")[0])
        mine, _, _ = row.mean_std("dev_metric")
        theirs, _, _ = best.mean_std("dev_metric")
        if mine < theirs:
            out.append(
                f"- {row.info.get('label', row.experiment)}: dev {mine:.4f} vs {theirs:.4f} for "
                f"{best.info.get('label', best.experiment)} (−{theirs - mine:.4f})."
            )
        ref = reference_lora(rows, row.budget)
        if ref is None:
            continue
        key = step_key(rows)
        costs = (
            (key, "steps {:.2f}× slower than"),
            ("train_memory_growth_mib", "training memory growth {:.2f}× that of"),
        )
        for field_name, text in costs:
            ratio = shown_ratio(row.median(field_name), ref.median(field_name))
            if ratio > LOSS_RATIO:
                out.append(f"- {row.info.get('label', row.experiment)}: {text.format(ratio)} PEFT LoRA.")
    return out or ["- none at this task: every one of our methods matches or beats the best PEFT method here."]


def summary_table(grouped: dict[tuple[str, str], list[Row]]) -> list[str]:
    """Each of our methods against the best PEFT method at the same budget, task by task."""
    lines = [
        "| backbone | task | budget | our method | dev (ours) | best PEFT method at this budget | dev (PEFT) | Δ |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (backbone, task), rows in sorted(grouped.items(), key=lambda kv: (kv[0][0], _task_rank(kv[0][1]))):
        for row in sorted(rows, key=sort_key):
            if not row.ours or not row.runs:
                continue
            peers = [
                r for r in rows if not r.ours and r.runs and r.family in BASELINE_FAMILIES and r.budget == row.budget
            ]
            if not peers:
                continue
            best = max(peers, key=lambda r: r.mean_std("dev_metric")[0])
            mine, theirs = row.mean_std("dev_metric"), best.mean_std("dev_metric")
            lines.append(
                f"| {backbone} | {task} | {budget_label(row.budget)} | {row.info.get('label', row.experiment)} | "
                f"{fmt_metric(*mine)} | {best.info.get('label', best.experiment)} | {fmt_metric(*theirs)} | "
                f"{mine[0] - theirs[0]:+.4f} |"
            )
    return lines


# plots
def _pyplot():
    """`matplotlib.pyplot` on the Agg backend, or None when matplotlib is missing (the report then has no plots)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_quality(rows: list[Row], metric: str, path: Path, title: str) -> Path | None:
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    families = sorted({r.family for r in rows if r.runs})
    cmap = plt.get_cmap("tab20")
    for i, family in enumerate(families):
        members = [r for r in rows if r.family == family and r.runs]
        xs = [r.median("trainable_params") for r in members]
        stats = [r.mean_std("dev_metric") for r in members]
        ours = members[0].ours
        ax.errorbar(
            xs,
            [s[0] for s in stats],
            yerr=[0 if math.isnan(s[1]) else s[1] for s in stats],
            fmt="*-" if ours else "o--",
            markersize=11 if ours else 6,
            color=cmap(i % 20),
            label=family + (" (ours)" if ours else ""),
            capsize=3,
        )
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (classification head excluded)")
    ax.set_ylabel(f"dev {METRIC_NAMES.get(metric, metric)} (mean ± std over seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    save_figure(plt, fig, path)
    return path


def plot_cost(rows: list[Row], path: Path, title: str) -> Path | None:
    plt = _pyplot()
    if plt is None:
        return None
    done = sorted((r for r in rows if r.runs), key=sort_key)
    if not done:
        return None
    labels = [r.info.get("label", r.experiment) for r in done]
    colors = ["tab:orange" if r.ours else "tab:blue" for r in done]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.3 * len(done) + 1.5), sharey=True)
    key = step_key(rows)
    axes[0].barh(labels, [1000 * r.median(key) for r in done], color=colors)
    axes[0].set_xlabel(f"median {'CPU' if key == 'step_cpu_time_s' else 'wall'} time per step (ms)")
    axes[1].barh(labels, [r.median("train_memory_growth_mib") for r in done], color=colors)
    axes[1].set_xlabel("training memory growth (MiB)")
    axes[0].invert_yaxis()
    axes[0].tick_params(axis="y", labelsize=7)
    for ax in axes:
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title + " (orange: ours)")
    fig.tight_layout()
    save_figure(plt, fig, path)
    return path


def save_figure(plt, fig, path: Path) -> None:
    """Write `fig` as a PNG to `path` atomically (an interrupted write leaves the previous file), then close it."""
    from peft_designspace._io import atomic_path

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)


# the document
def render(
    grouped: dict[tuple[str, str], list[Row]], output: Path, command: str, results_dir: Path = RESULTS_DIR
) -> str:
    images = output.parent / "benchmarks"
    lines = [
        "# Benchmarks: our methods against PEFT's at equal budgets",
        "",
        f"<!-- Generated by bench/suite/report.py from {display_path(results_dir)}; do not edit by hand. -->",
        "",
        "Every method trains the same classification head (counted apart) on a real pretrained backbone and real GLUE "
        "data. Learning rates are chosen on a validation split carved from train; the GLUE dev split gives the final "
        "number (mean ± sample std over seeds at the chosen rate). Settings, layout and the time budget: "
        "[bench/suite/README.md](../bench/suite/README.md). ★ marks this pack's methods.",
        "",
        f"Regenerate: `{command}` (after `python bench/suite/run.py`).",
        "",
    ]
    metas = [r.runs[0]["meta_info"] for rows in grouped.values() for r in rows if r.runs]
    if metas:
        meta = metas[-1]
        versions = ", ".join(f"{k} {v}" for k, v in meta["package_versions"].items() if v)
        revisions = sorted({(m.get("git_revision") or "?")[:10] for m in metas})
        lines += [
            f"Measured on {meta['device']} ({meta.get('device_name')}, {meta.get('cpu_count')} cores, "
            f"{meta.get('torch_threads')} torch threads); {versions}; git {', '.join(revisions)}.",
            "",
        ]
    lines += [
        "## Summary: our methods against the best PEFT method at the same budget",
        "",
        "Δ is our mean dev metric minus that of the best of PEFT's LoRA, prefix tuning, SHiRA, Supertuning and BEFT "
        "at the same budget; treat a |Δ| smaller than either side's standard deviation as seed noise.",
        "",
        *summary_table(grouped),
        "",
    ]
    from plan import load_experiments

    experiments = {e.name: e for e in load_experiments()}  # read once, for every section's reproduce line
    every = sorted(experiments)
    for (backbone, task), rows in sorted(grouped.items(), key=lambda kv: (kv[0][0], _task_rank(kv[0][1]))):
        done = [r for r in rows if r.runs]
        metric = done[0].runs[0]["train_info"]["metric"] if done else "accuracy"
        seconds = sum(row.seconds for row in rows)
        params = done[0].info.get("training_params", {}) if done else {}
        settings = settings_arguments(rows, task, experiments)
        command = reproduce_command(backbone, task, rows, every, settings)
        lines += [f"## {task} on {backbone}", "", f"Reproduce: `{command}`", ""]
        if params:
            lines += [
                f"{params.get('max_steps')} steps, batch {params.get('batch_size')}, max length "
                f"{_length(params, task)}, {params.get('max_train_samples')} train rows, validation "
                f"{params.get('validation_samples')} rows; {sum(len(r.runs) for r in rows)} runs at the chosen rates, "
                f"{seconds / 60:.0f} min of run time in all (sweeps included, summed over workers).",
                "",
            ]
        stem = f"{backbone}-{task}".lower()
        quality_png = plot_quality(rows, metric, images / f"{stem}-quality.png", f"{task} on {backbone}")
        cost_png = plot_cost(rows, images / f"{stem}-cost.png", f"{task} on {backbone}: cost per method")
        lines += ["### Quality", ""] + quality_table(rows, metric) + [""]
        if quality_png:
            lines += [f"![{task} quality vs parameters]({os.path.relpath(quality_png, output.parent)})", ""]
        lines += ["### Speed and memory", ""] + speed_table(rows) + [""]
        if cost_png:
            lines += [f"![{task} step time and memory]({os.path.relpath(cost_png, output.parent)})", ""]
        lines += ["### Where our methods lose", ""] + losses(rows) + [""]
    return "\n".join(lines)


def reproduce_command(
    backbone: str, task: str, rows: list[Row], every: list[str] | None = None, settings: list[str] | None = None
) -> str:
    """The command that reruns one (backbone, task) section: its backbone, quantization, task and experiments, and
    the `--set` values of `settings` (from `settings_arguments`).

    `every` is the sorted list of all experiment names (read from the experiments folder when None).
    """
    if every is None:
        from plan import load_experiments

        every = sorted(e.name for e in load_experiments())
    parts = ["python bench/suite/run.py"]
    name, _, quantization = backbone.rpartition("-") if backbone.endswith(("-8bit", "-4bit")) else (backbone, "", "")
    if name != "minilm":
        parts.append(f"--backbone {name}")
    if quantization:
        parts.append(f"--quantization {quantization}")
    parts.append(f"--tasks {task}")
    mine = sorted({row.experiment for row in rows})
    if mine != every:
        parts.append("--experiments " + " ".join(f'"{e}"' for e in mine))
    if settings:
        parts.append("--set " + " ".join(shlex.quote(item) for item in settings))
    return " ".join([*parts, "--workers 2"])


def settings_arguments(rows: list[Row], task: str, experiments: dict) -> list[str]:
    """`KEY=JSON` values for `run.py --set` that train as the finished `rows` were trained: the recorded training
    params that differ from the defaults (after the experiment's own), plus the seeds and learning-rate multipliers
    when they differ. Empty for results made with the defaults. `experiments` maps names to `plan.Experiment`s."""
    from plan import NOT_SETTINGS, load_defaults

    defaults = load_defaults()
    per_task = defaults.get("per_task", {}).get(task, {})
    changed: dict = {}
    seeds, multipliers = set(), set()
    for row in rows:
        if not row.runs:
            continue
        experiment = experiments.get(row.experiment)  # None for a folder outside the experiments: defaults alone
        recorded = {k: v for k, v in row.info.get("training_params", {}).items() if k not in NOT_SETTINGS}
        diff = _differences(recorded, _expected_params(experiment, defaults, task))
        if set(diff) & set(per_task):  # --set cannot beat a per-task default: it must be cleared
            changed["per_task"] = {}
            diff = _differences(recorded, _expected_params(experiment, {**defaults, "per_task": {}}, task))
        changed.update(diff)
        seeds.update(r["run_info"]["seed"] for r in row.runs)
        base = recorded.get("learning_rate_base")
        if base:
            multipliers.update(float(f"{lr / base:.6g}") for lr in row.sweep)
    if seeds and sorted(seeds) != sorted(defaults["seeds"]):
        changed["seeds"] = sorted(seeds)
    if multipliers and sorted(multipliers) != sorted(defaults["lr_multipliers"]):
        changed["lr_multipliers"] = [int(m) if m.is_integer() else m for m in sorted(multipliers)]
    return [f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in sorted(changed.items())]


def _expected_params(experiment, defaults: dict, task: str) -> dict:
    """The training params run.py gives `experiment` (a `plan.Experiment`, or None for the defaults alone)."""
    from plan import task_params

    params = task_params(defaults, task)
    return experiment.training_params(params) if experiment else params


def _differences(recorded: dict, expected: dict) -> dict:
    return {k: v for k, v in recorded.items() if v != expected.get(k)}


def display_path(path: Path) -> str:
    """`path` relative to the repository when inside it (as the commands are written), else absolute."""
    path = Path(path).resolve()
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def regenerate_command(results_dir: Path, output: Path) -> str:
    """The report command for `results_dir` and `output` (the defaults left out)."""
    parts = ["python bench/suite/report.py"]
    if Path(results_dir).resolve() != RESULTS_DIR:
        parts.append(f"--results-dir {shlex.quote(display_path(results_dir))}")
    if Path(output).resolve() != OUTPUT:
        parts.append(f"--output {shlex.quote(display_path(output))}")
    return " ".join(parts)


def _task_rank(task: str) -> int:
    return TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER)


def _length(params: dict, task: str):
    value = params.get("max_length")
    return value.get(task) if isinstance(value, dict) else value


def write_report(results_dir: Path = RESULTS_DIR, output: Path = OUTPUT, command: str | None = None) -> Path:
    """Render the report of `results_dir` to `output` (written to a temporary file, then renamed)."""
    grouped = load_rows(results_dir)
    if not grouped:
        raise FileNotFoundError(f"No suite results under {results_dir}; run `python bench/suite/run.py` first.")
    text = render(grouped, output, command or regenerate_command(results_dir, output), results_dir)
    from peft_designspace._io import write_text_atomic

    write_text_atomic(output, text)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    parser.add_argument("--output", default=str(OUTPUT))
    args = parser.parse_args(argv)
    try:
        path = write_report(Path(args.results_dir), Path(args.output))
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
