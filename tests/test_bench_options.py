"""The step benchmarks refuse a bad count up front, naming the option (a zero `--threads` or `--batch-size` of the
S3PET search bench failed deep inside torch, or timed an empty batch)."""

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


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
