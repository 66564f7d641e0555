"""The example scripts' option checks: a value the run cannot use exits 2 with one line naming the option, before any
model weights load (`examples/designspace/train_glue.py`, `examples/s3pet/search_glue.py`)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_example(relative: str):
    spec = importlib.util.spec_from_file_location(Path(relative).stem + "_example_under_test", ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def refused(entry, argv: list[str], capsys) -> str:
    """The last stderr line of `entry(argv)` (an example's `parse_args` or `main`), which must exit 2."""
    with pytest.raises(SystemExit) as exit_:
        entry(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2, err
    return err[-1]


def common(tiny, tmp_path, data=None) -> list[str]:
    data = data or tiny / "SST-2"
    return ["--data_dir", str(data), "--model_name_or_path", str(tiny / "model"), "--output_dir", str(tmp_path / "o")]


@pytest.mark.parametrize("samples", ["1", "2"])
def test_search_glue_needs_rows_for_validation_and_the_search_streams(samples, tiny, tmp_path, no_model_loads, capsys):
    example = load_example("examples/s3pet/search_glue.py")
    last = refused(example.parse_args, [*common(tiny, tmp_path), "--max_train_samples", samples], capsys)
    assert "--max_train_samples must be >= 3" in last and f"got {samples}" in last, last
    assert example.parse_args([*common(tiny, tmp_path), "--max_train_samples", "3"]).max_train_samples == 3


def test_search_glue_refuses_data_with_too_few_training_rows(tiny, tmp_path, no_model_loads, capsys):
    example = load_example("examples/s3pet/search_glue.py")
    folder = tmp_path / "data" / "SST-2"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text("sentence\tlabel\nthe film is good\t1\nthe film is bad\t0\n")
    (folder / "dev.tsv").write_text((tiny / "SST-2" / "dev.tsv").read_text())
    last = refused(example.parse_args, common(tiny, tmp_path, folder), capsys)
    assert "--data_dir has 2 training rows" in last and "at least 3" in last, last


@pytest.mark.parametrize(
    ("script", "bad", "message", "good"),
    [
        ("examples/s3pet/search_glue.py", "10", "smallest candidate", "0.01"),  # below the smallest candidate
        ("examples/designspace/train_glue.py", "0.0001", "infeasible", "0.05"),  # no S4 design that small
    ],
)
def test_a_budget_the_model_cannot_take_exits_2(script, bad, message, good, tiny, tmp_path, no_model_loads, capsys):
    example = load_example(script)
    last = refused(example.main, [*common(tiny, tmp_path), "--budget", bad], capsys)
    assert f": error: --budget {bad}" in last and message in last, last
    assert not (tmp_path / "o").exists()
    assert example.budget_problem_on_model(example.parse_args([*common(tiny, tmp_path), "--budget", good])) is None


def test_train_glue_sam_budget_above_the_targeted_weights_exits_2(tiny, tmp_path, no_model_loads, capsys):
    example = load_example("examples/designspace/train_glue.py")
    argv = [*common(tiny, tmp_path), "--method", "sam", "--budget", "100000000"]
    last = refused(example.main, argv, capsys)
    assert ": error: --budget 1e+08" in last and "targeted" in last, last
