"""The step benchmarks refuse a bad count up front, naming the option (a zero `--threads` or `--batch-size` of the
S3PET search bench failed deep inside torch, or timed an empty batch)."""

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CASES = [
    ("s3pet_search_step", "--threads", "0"),
    ("s3pet_search_step", "--lora-rank", "0"),
    ("s3pet_search_step", "--batch-size", "0"),
    ("s3pet_search_step", "--seq-len", "-1"),
    ("s3pet_search_step", "--steps", "0"),
    ("s3pet_search_step", "--lr", "0"),
    ("designspace_step_time", "--batch-size", "0"),
    ("sam_memory_speed", "--calib-batches", "0"),
    ("sam_memory_speed", "--rank", "0"),
]


@pytest.mark.parametrize(("bench", "option", "value"), CASES, ids=[f"{b}:{o}" for b, o, _ in CASES])
def test_a_bad_count_is_a_usage_error_naming_the_option(bench, option, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _bench(bench).parse_args([option, value])
    assert exit_info.value.code == 2
    assert option in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("bench", ["s3pet_search_step", "designspace_step_time", "sam_memory_speed"])
def test_the_defaults_parse(bench):
    args = _bench(bench).parse_args([])
    assert args.steps >= 1 and args.max_rounds >= 1


# every bad value is a usage error (exit 2) before any model is built, whose one message names the option and the
# value; "{tmp}" stands for an existing folder
BAD_VALUES = [
    ("s3pet_search_step", ["--steps", "0"], "--steps", "0"),
    ("s3pet_search_step", ["--seq-len", "600"], "--seq-len", "600"),
    ("s3pet_search_step", ["--wait-quiet", "nan"], "--wait-quiet", "nan"),
    ("s3pet_search_step", ["--lr", "-0.5"], "--lr", "-0.5"),
    ("s3pet_search_step", ["--target-ratio", "nan"], "--target-ratio", "nan"),
    ("s3pet_search_step", ["--budget", "1.5"], "--budget", "1.5"),
    ("s3pet_search_step", ["--budget", "10"], "--budget", "10"),
    ("s3pet_search_step", ["--budget", "1e-12"], "--budget", "1e-12"),
    ("s3pet_search_step", ["--json", "{tmp}"], "--json", "{tmp}"),
    ("s3pet_search_step", ["--json", "{tmp}/missing/out.json"], "--json", "{tmp}/missing/out.json"),
    ("designspace_step_time", ["--seq-len", "600"], "--seq-len", "600"),
    ("designspace_step_time", ["--budget", "inf"], "--budget", "inf"),
    ("designspace_step_time", ["--budget", "0.0001"], "--budget", "0.0001"),
    ("designspace_step_time", ["--lora-targets", "foo"], "--lora-targets", "foo"),
    ("designspace_step_time", ["--lora-targets", "classifier"], "--lora-targets", "classifier"),
    ("designspace_step_time", ["--json", "{tmp}"], "--json", "{tmp}"),
    ("sam_memory_speed", ["--quick", "--cases", "minilm", "--seq-len", "600"], "--seq-len", "600"),
    ("sam_memory_speed", ["--quick", "--cases", "linear", "--linear-size", "16", "--rank", "8"], "--rank", "8"),
    ("sam_memory_speed", ["--quick", "--cases", "linear", "--linear-size", "8", "--rank", "8"], "--rank", "8"),
    ("sam_memory_speed", ["--quick", "--cases", "minilm", "--rank", "192"], "--rank", "192"),
    ("sam_memory_speed", ["--quick", "--wait-quiet", "inf"], "--wait-quiet", "inf"),
    ("sam_memory_speed", ["--quick", "--json", "{tmp}"], "--json", "{tmp}"),
]


@pytest.mark.parametrize(
    ("bench", "argv", "option", "value"), BAD_VALUES, ids=[f"{b}:{' '.join(a)}" for b, a, _, _ in BAD_VALUES]
)
def test_a_bad_value_is_a_usage_error_naming_the_option_and_value(bench, argv, option, value, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        _bench(bench).parse_args(argv)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert option in message and value.replace("{tmp}", str(tmp_path)) in message


def test_the_s3pet_budget_help_says_counts_are_accepted(capsys):
    with pytest.raises(SystemExit):
        _bench("s3pet_search_step").parse_args(["--help"])
    assert "whole count" in " ".join(capsys.readouterr().out.split())


def test_the_s3pet_methods_put_the_lora_baseline_first_once():
    args = _bench("s3pet_search_step").parse_args(["--methods", "s3pet-search", "peft-lora", "s3pet-search"])
    assert args.methods == ["peft-lora", "s3pet-search"]


class _Stop(Exception):
    pass


class _Empty:
    def parameters(self):
        return iter(())


def test_the_s3pet_baseline_is_lora_by_name(monkeypatch):
    """`main` takes PEFT LoRA as the reference of the ratios wherever it stands among the methods."""
    import torch

    module = _bench("s3pet_search_step")
    baselines = []

    def summarise(method, baseline, filtering):
        baselines.append(baseline.name)
        raise _Stop  # the rest of main is not faked

    args = argparse.Namespace(
        methods=["s3pet-search", "peft-lora"], threads=torch.get_num_threads(), seed=0, device="cpu"
    )
    args.batch_size = args.seq_len = 1
    monkeypatch.setattr(module, "parse_args", lambda argv: args)
    monkeypatch.setattr(module, "build_base", lambda seed: _Empty())
    monkeypatch.setattr(module, "build", lambda name, args: (_Empty(), None, {}, None, name, {}))
    monkeypatch.setattr(module, "method_params", lambda model: (0, 0))
    monkeypatch.setattr(module, "make_batch", lambda *a: {})
    monkeypatch.setattr(module, "run_rounds", lambda *a: {"filtering": False})
    monkeypatch.setattr(module, "summarise", summarise)
    with pytest.raises(_Stop):
        module.main([])
    assert baselines == ["peft-lora"]


def _rows(filtering: bool, clean: int = 1, total: int = 1) -> list[dict]:
    from _timing import Method, Step, summarise

    steps = [Step(r, 40.0, 40.0, 0.0, r < clean) for r in range(total)]
    lora = Method("peft-lora", "", None, None, 0, 0, steps=steps)
    s4 = Method("s4", "", None, None, 0, 0, steps=list(steps))
    return [summarise(m, lora, filtering) for m in (lora, s4)]


def test_no_contention_mark_without_the_filter():
    table = _bench("designspace_step_time").format_table(_rows(filtering=False), False)
    assert "!" not in table
    assert "!" in _bench("designspace_step_time").format_table(_rows(filtering=True, clean=1, total=4), False)


def test_a_failed_memory_measurement_keeps_the_timing_table():
    rows = _rows(filtering=False)
    rows[0].update(peak_rss_mib=500.0, step_rss_growth_mib=20.0)
    rows[1].update(peak_rss_mib=None, step_rss_growth_mib=None, memory_error="exited with code -9")
    table = _bench("designspace_step_time").format_table(rows, True)
    assert "500 MiB" in table and "s4" in table


def test_sam_does_not_judge_a_contended_step_ratio():
    sam = {"method": "sam", "ratio": 0.5, "ratio_contended": True, "method_params": 10, "file_bytes": 100}
    args = argparse.Namespace(target_ratio=1.1, target_saved_mib=0.1)
    found = _bench("sam_memory_speed").check_targets({"minilm": {"results": [sam]}}, args)["minilm"]["step_ratio"]
    assert found["met"] is None and not found["judged"]
    sam["ratio_contended"] = False
    found = _bench("sam_memory_speed").check_targets({"minilm": {"results": [sam]}}, args)["minilm"]["step_ratio"]
    assert found["met"] is True and found["judged"]
