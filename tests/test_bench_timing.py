"""The shared timing machinery of the benchmarks (`bench/_timing.py`): ratios over one selection of steps on both
sides, no verdict on contended ratios, no contention flags without the filter, a warning for steps too short for the
filter, and a memory process that dies is reported at once instead of waited on for ten minutes."""

import argparse
import sys
import threading
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import _timing  # noqa: E402
from _timing import Method, Step, summarise  # noqa: E402


def _method(name: str, clean: int, total: int = 30, clean_ms: float = 40.0, contended_ms: float = 100.0) -> Method:
    """A method whose first `clean` steps ran uncontended at `clean_ms`, the rest contended at `contended_ms`."""
    steps = [
        Step(r, clean_ms if r < clean else contended_ms, clean_ms, 0.0 if r < clean else 1.0, r < clean)
        for r in range(total)
    ]
    return Method(name, "", None, None, 0, 0, steps=steps)


def test_a_ratio_uses_the_same_steps_on_both_sides():
    # the same speed on both sides; only the baseline is short of clean steps
    baseline, other = _method("peft-lora", clean=2), _method("other", clean=6)
    row = summarise(other, baseline, filtering=True)
    for key in ("ratio", "paired_ratio_median", "cpu_ratio", "min_ratio"):
        assert row[key] == pytest.approx(1.0), key
    assert row["median_ms"] == summarise(baseline, baseline, filtering=True)["median_ms"]
    assert row["selection"] == "all" and row["ratio_contended"]


def test_a_ratio_of_clean_methods_uses_their_clean_steps():
    baseline, other = _method("peft-lora", clean=4), _method("other", clean=6)
    row = summarise(other, baseline, filtering=True)
    assert row["selection"] == "clean" and not row["ratio_contended"]
    assert row["median_ms"] == min(s.wall_ms for s in other.steps)
    assert row["ratio"] == pytest.approx(1.0)


def test_a_contended_ratio_is_not_judged():
    baseline, other = _method("peft-lora", clean=0), _method("other", clean=0, contended_ms=10.0)
    found = _timing.verdict(summarise(other, baseline, filtering=True), limit=2.0)
    assert found["met"] is None and not found["judged"]
    assert "not judged" in _timing.verdict_text(found) and "MET" not in _timing.verdict_text(found)

    clean = _timing.verdict(summarise(_method("o", clean=30), _method("peft-lora", clean=30), filtering=True), 2.0)
    assert clean["judged"] and clean["met"] is True and _timing.verdict_text(clean) == "MET"


def test_a_run_without_the_filter_flags_no_contention():
    # --no-filter: every step counts as clean, and with fewer than MIN_CLEAN steps nothing is known to be contended
    method = _method("peft-lora", clean=1, total=1)
    row = summarise(method, method, filtering=False)
    assert not row["contended"] and not row["ratio_contended"]
    assert _timing.verdict(row, 2.0)["judged"]


def test_a_filtered_method_short_of_clean_steps_is_flagged():
    method = _method("peft-lora", clean=1, total=4)
    assert summarise(method, method, filtering=True)["contended"]


def test_steps_shorter_than_the_filter_can_judge_are_warned():
    limit = _timing.filter_resolution_ms(0.1)
    short = _method("short", clean=3, total=3, clean_ms=limit / 4)
    long = _method("long", clean=3, total=3, clean_ms=limit * 4)
    warning = _timing.short_step_warning([short, long], 0.1)
    assert warning is not None and "short" in warning and "long" not in warning
    assert _timing.short_step_warning([long], 0.1) is None
    # the resolution is coarser with more CPUs and a lower threshold
    assert _timing.filter_resolution_ms(0.05, cpus=4) > _timing.filter_resolution_ms(0.1, cpus=2)


class _Tiny:
    def train(self):
        return self


def test_a_filtered_run_of_short_steps_records_the_warning():
    load = _timing.ForeignLoad()
    if not load.available:
        pytest.skip("no /proc/stat: the contention filter is off")
    args = argparse.Namespace(
        steps=1, warmup=0, round_steps=1, max_rounds=1, no_filter=False, max_foreign_load=0.1, wait_quiet=0.0
    )
    args.no_progress = True
    methods = [Method("quick", "", _Tiny(), None, 0, 0, step=lambda batch: None)]
    run = _timing.run_rounds(methods, {}, args, load)
    assert run["filtering"] and "quick" in run["warning"]
    args.no_filter = True
    assert "warning" not in _timing.run_rounds(methods, {}, args, load)


def failing_setup():
    """A memory job's setup that fails in the child process (stands for an OOM kill or a CUDA error)."""
    raise RuntimeError("setup failed in the child")


def test_a_memory_process_that_dies_is_reported_at_once():
    found = {}
    worker = threading.Thread(
        target=lambda: found.update(_timing.measure_memory(failing_setup, {"broken": ()}, threads=1)), daemon=True
    )
    worker.start()
    worker.join(timeout=120)  # the child dies within seconds; before the fix the parent waited 600 s
    assert not worker.is_alive(), "measure_memory kept waiting for a dead process"
    result = found["broken"]
    assert result["peak_rss_mib"] is None and result["step_rss_growth_mib"] is None
    assert "exit" in result["memory_error"] and "code 1" in result["memory_error"]
