"""Plots and the markdown report of a design-space exploration (`trainer_ext.explore`)."""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING

from peft_designspace._io import atomic_path, write_text_atomic
from peft_designspace.designspace.refine import edf_curve, stage_table, summarize
from peft_designspace.designspace.space import (
    design_label,
)

from .explore_eval import ExploreSettings

TITLE = "# Design-space exploration report"  # the first line of every report (a rerun overwrites only such a file)

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .explore import ExplorationResult


def plot_edfs(title: str, candidate_errors: dict[str, list[float]], path: str) -> str:
    """One error-EDF step curve per candidate, saved as a PNG at `path` (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    try:
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
        with atomic_path(path) as tmp:  # an interrupted rerun keeps the previous plot
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path


def write_report(result: ExplorationResult, settings: ExploreSettings, start_space, all_results, output_dir) -> str:
    """Markdown report: settings, one section per stage (table and EDF plot), the refined space and best design."""
    folder = os.path.dirname(os.path.abspath(result.report_path))
    rel = lambda p: os.path.relpath(os.path.abspath(p), folder)  # noqa: E731
    trained = list(all_results.values())
    lines = [
        TITLE,
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
    space_block = ["```json", json.dumps(result.final_space.to_dict()), "```", ""]
    if result.stopped_at is not None:
        resume = f"The exploration stopped at {result.stopped_at}; re-run the same command to resume."
        lines += ["## Not finished", "", f"{resume} Refined space so far:", "", *space_block]
    else:
        lines += ["## Outcome", "", "Refined space:", "", *space_block]
        lines += [
            f"Best design in it: `{design_label(result.best_design)}`, error {result.best_error:.4f}. Saved as a "
            f"`DesignSpaceConfig` in `{rel(os.path.join(output_dir, 'best_config'))}` "
            "(`DesignSpaceConfig.from_pretrained(path)`).",
            "",
        ]
    write_text_atomic(result.report_path, "\n".join(lines))
    return result.report_path
