"""Faults found in review of the command line, `scripts/main_job.sh` and the GLUE example scripts: destructive
`--overwrite`, default output names, errors that gave tracebacks, checks after the model loads, noisy `-q`."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import transformers
from test_cli import run  # the fixtures `tiny` and `no_model_loads` are in conftest.py

from adapters_hub._files import atomic_output_dir, check_output_dir
from adapters_hub.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
MARKER = ".peft-designspace-output"  # adapters_hub._files.MARKER


def glue_copy(tiny, tmp_path, name="SST-2", train_text=None, dev=True):
    folder = tmp_path / "data" / name
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text(train_text or (tiny / "SST-2" / "train.tsv").read_text())
    if dev:
        (folder / "dev.tsv").write_text((tiny / "SST-2" / "dev.tsv").read_text())
    return folder


def load_example(relative):
    spec = importlib.util.spec_from_file_location(Path(relative).stem + "_under_test", ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_args(tiny):
    return ["--data", str(tiny / "SST-2"), "--model", str(tiny / "model"), "--batch_size", "8", "--max_steps", "1"]


# 1 (HIGH): --overwrite replaces only a previous output of the pack ---------------------------------------------------
def test_overwrite_refuses_a_folder_that_is_not_a_pack_output(tiny, tmp_path, no_model_loads, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "precious" / "sub").mkdir(parents=True)
    (tmp_path / "precious" / "thesis.txt").write_text("hi")
    code, _, err = run(["train", *tiny_args(tiny), "--output_dir", "precious", "--overwrite"], capsys)
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert "--output_dir" in last and "precious" in last and "previous output" in last, last
    assert (tmp_path / "precious" / "thesis.txt").read_text() == "hi" and (tmp_path / "precious" / "sub").is_dir()


@pytest.mark.parametrize("target", [".", "..", "{data}", "{data}/.."])
def test_overwrite_never_takes_the_cwd_its_parents_or_the_inputs(
    target, tiny, tmp_path, no_model_loads, capsys, monkeypatch
):
    work = tmp_path / "work"
    work.mkdir()
    data = glue_copy(tiny, work)
    monkeypatch.chdir(work)
    argv = ["train", "--data", str(data), "--model", str(tiny / "model"), "--overwrite"]
    code, _, err = run([*argv, "--output_dir", target.format(data=data)], capsys)
    assert code == 2, err
    assert "--output_dir" in err.strip().splitlines()[-1]
    assert (data / "train.tsv").is_file() and work.is_dir()


def test_the_repository_root_is_never_an_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    with pytest.raises(FileExistsError, match=r"\.git"):
        check_output_dir(repo, overwrite=True, only_pack_outputs=True)
    with pytest.raises(FileExistsError, match="repository|source tree"):
        check_output_dir(ROOT, overwrite=True)  # even for the library's own callers (no only_pack_outputs)


def test_previous_outputs_of_the_pack_are_recognised(tmp_path):
    with atomic_output_dir(tmp_path / "new") as tmp:
        (tmp / "anything.bin").write_text("x")
    assert (tmp_path / "new" / MARKER).is_file()
    check_output_dir(tmp_path / "new", overwrite=True, only_pack_outputs=True)
    legacy = tmp_path / "legacy"  # written before the marker existed
    (legacy / "adapter").mkdir(parents=True)
    (legacy / "results.json").write_text("{}")
    check_output_dir(legacy, overwrite=True, only_pack_outputs=True)
    (legacy / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="previous output"):
        check_output_dir(legacy, overwrite=True, only_pack_outputs=True)


def test_main_job_takes_a_relative_output_dir_from_the_callers_directory(tiny, tmp_path):
    caller = tmp_path / "caller"
    (caller / "rel").mkdir(parents=True)
    (caller / "rel" / "thesis.txt").write_text("hi")
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "main_job.sh"), str(tiny / "SST-2"), "--output_dir", "rel"]
        + ["--model", str(tiny / "model"), "--max_steps", "0"],
        cwd=caller,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert f"--output_dir {caller / 'rel'}" in last and "previous output" in last, last
    assert (caller / "rel" / "thesis.txt").read_text() == "hi"
    assert not (ROOT / "rel").exists()


def test_main_job_takes_the_data_from_data_or_glue_dir_once(tiny, tmp_path):
    # `--data` was refused when the default ../shared folder was missing, and with GLUE_DIR as well the later of the
    # two won without a word (a bad-input fuzz, 2026-11-25)
    caller = tmp_path / "caller"
    (caller / "rel").mkdir(parents=True)
    (caller / "rel" / "thesis.txt").write_text("hi")
    common = ["--output_dir", "rel", "--model", str(tiny / "model"), "--max_steps", "0"]
    script = ["bash", str(ROOT / "scripts" / "main_job.sh")]
    both = subprocess.run(script + [str(tiny / "SST-2"), "--data", str(tiny / "SST-2"), *common], cwd=caller,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert both.returncode == 2 and "give the GLUE folder once" in both.stderr, both.stderr[-2000:]
    given = subprocess.run(script + ["--data", str(tiny / "SST-2"), *common], cwd=caller,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert given.returncode == 2, given.stderr[-2000:]
    assert "previous output" in given.stderr.strip().splitlines()[-1]  # past the data: the CLI checked the output
    assert (caller / "rel" / "thesis.txt").read_text() == "hi"


# 1, 2, 10, 13: a previous output is replaced, presets get their own folder, -q is quiet, logs name the final path --
def test_default_folders_per_preset_replace_quietly(tiny, tmp_path, capsys, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(["train", *tiny_args(tiny), "--budget", "0.1", "-q"], capsys)
    assert code == 0, err[-2000:]
    assert "'train_runtime'" not in out + err and "'dev_loss'" not in out + err  # Trainer's dicts are not printed
    s4 = tmp_path / "outputs" / "designspace-SST-2"
    assert (s4 / MARKER).is_file()
    first = (s4 / "results.json").read_text()

    code, out, err = run(["train", *tiny_args(tiny), "--preset", "lora", "--budget", "0.05", "-q"], capsys)
    assert code == 0, err[-2000:]
    assert "adapter=outputs/designspace-lora-SST-2/adapter" in out
    assert (s4 / "results.json").read_text() == first  # the S4 run is kept

    caplog.set_level("INFO", logger="trainer_ext.callbacks")
    code, out, err = run(["train", *tiny_args(tiny), "--budget", "0.1", "--seed", "1", "--overwrite"], capsys)
    assert code == 0, err[-2000:]
    assert json.loads((s4 / "results.json").read_text())["seed"] == 1  # replaced
    messages = [
        r.getMessage() for r in caplog.records if "Budget report" in r.getMessage() and "json" in r.getMessage()
    ]
    assert messages and all(".tmp-" not in m for m in messages), messages
    assert any(os.path.join("outputs", "designspace-SST-2", "budget_report.json") in m for m in messages), messages
    assert sorted(os.listdir(tmp_path / "outputs")) == ["designspace-SST-2", "designspace-lora-SST-2"]


# 3, 4 (MEDIUM): the example scripts ----------------------------------------------------------------------------------
def test_train_glue_example_reports_a_bad_label_as_a_usage_error(tiny, tmp_path, no_model_loads, capsys):
    example = load_example("examples/designspace/train_glue.py")
    bad = (tiny / "SST-2" / "train.tsv").read_text().replace("\t1\n", "\tmaybe\n", 1)
    data = glue_copy(tiny, tmp_path, train_text=bad)
    argv = ["--data_dir", str(data), "--model_name_or_path", str(tiny / "model"), "--output_dir", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_:
        example.parse_args(argv)
    assert exit_.value.code == 2
    assert "--data_dir" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "sam", "--preset", "lora"], "--preset 'lora' applies to --method designspace only"),
        (["--preset", "bitfit", "--score", "fisher"], "--score 'fisher' applies to --method sam only"),
    ],
)
def test_train_glue_example_refuses_options_that_do_not_apply(extra, message, tiny, tmp_path, no_model_loads, capsys):
    # they were silently ignored, as the command line refuses them (a bad-input fuzz, 2026-11-25)
    example = load_example("examples/designspace/train_glue.py")
    argv = ["--data_dir", str(tiny / "SST-2"), "--model_name_or_path", str(tiny / "model"), *extra]
    with pytest.raises(SystemExit) as exit_:
        example.parse_args([*argv, "--output_dir", str(tmp_path / "o")])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    example.parse_args([*argv[:4], "--method", "sam", "--score", "fisher", "--output_dir", str(tmp_path / "o")])


def test_train_glue_example_refuses_then_replaces_a_previous_output(tiny, tmp_path, capsys):
    example = load_example("examples/designspace/train_glue.py")
    out = tmp_path / "o"
    out.mkdir()
    (out / MARKER).write_text("{}")
    (out / "stale.txt").write_text("from an older run")
    argv = ["--data_dir", str(tiny / "SST-2"), "--model_name_or_path", str(tiny / "model"), "--output_dir", str(out)]
    argv += ["--max_steps", "1", "--batch_size", "8", "--preset", "lora", "--budget", "0.05"]
    with pytest.raises(SystemExit) as exit_:
        example.parse_args(argv)
    assert exit_.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert example.main([*argv, "--overwrite"]) == 0
    assert not (out / "stale.txt").exists() and (out / "results.json").is_file()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


SEARCH_BAD = [
    (["--budget", "-1"], "--budget"),
    (["--budget", "inf"], "--budget"),
    (["--learning_rate", "-1"], "--learning_rate"),
    (["--max_length", "0"], "--max_length"),
    (["--max_eval_samples", "0"], "--max_eval_samples"),
    (["--budget", "2.5"], "--budget must be a whole number"),
    (["--arch_learning_rate", "nan"], "--arch_learning_rate must be > 0"),
    (["--search_steps", "0"], "--search_steps must be a positive int"),
    (["--max_length", "513"], "--max_length must be in [1, 512]"),
    (["--task", "mnli"], "--task 'mnli'"),  # the option exists and names what is allowed
    (["--seed", "-1"], "--seed must be an int in [0, 2**32)"),  # numpy's own error came after the model loaded
    (["--search_seed", "4294967296"], "--search_seed must be an int in [0, 2**32)"),
]


@pytest.mark.parametrize(("extra", "option"), SEARCH_BAD, ids=[o for _, o in SEARCH_BAD])
def test_search_glue_example_bad_options_exit_2(extra, option, tiny, tmp_path, no_model_loads, capsys):
    example = load_example("examples/s3pet/search_glue.py")
    argv = ["--data_dir", str(tiny / "SST-2"), "--model_name_or_path", str(tiny / "model"), *extra]
    with pytest.raises(SystemExit) as exit_:
        example.parse_args([*argv, "--output_dir", str(tmp_path / "o")])
    assert exit_.value.code == 2
    assert option in capsys.readouterr().err.strip().splitlines()[-1]


def test_search_glue_example_bad_data_exit_2(tiny, tmp_path, no_model_loads, capsys):
    example = load_example("examples/s3pet/search_glue.py")
    model = ["--model_name_or_path", str(tiny / "model"), "--output_dir", str(tmp_path / "o")]
    folders = {
        "malformed": glue_copy(tiny, tmp_path / "a", train_text="sentence\tlabel\nonly one column\n"),
        "no dev": glue_copy(tiny, tmp_path / "b", dev=False),
        "not GLUE": glue_copy(tiny, tmp_path / "c", name="mydata"),
    }
    for what, folder in folders.items():
        with pytest.raises(SystemExit) as exit_:
            example.parse_args(["--data_dir", str(folder), *model])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert exit_.value.code == 2 and "--data_dir" in err, (what, err)
    assert "--task" in err  # the hint names an option the script has
    args = example.parse_args(["--data_dir", str(folders["not GLUE"]), "--task", "sst2", *model])
    assert args.task == "SST-2"


def test_search_glue_example_help_shows_defaults(capsys):
    example = load_example("examples/s3pet/search_glue.py")
    with pytest.raises(SystemExit):
        example.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.0005)" in text and "(default: m)" in text


def test_search_glue_example_refuses_a_previous_output_without_overwrite(tiny, tmp_path, no_model_loads, capsys):
    example = load_example("examples/s3pet/search_glue.py")
    out = tmp_path / "o"
    (out / "adapter-random").mkdir(parents=True)
    (out / "results.json").write_text("{}")
    argv = ["--data_dir", str(tiny / "SST-2"), "--model_name_or_path", str(tiny / "model"), "--output_dir", str(out)]
    with pytest.raises(SystemExit) as exit_:
        example.parse_args(argv)
    assert exit_.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert example.parse_args([*argv, "--overwrite"]).overwrite  # a previous output of the script: replaceable


# 5 (MEDIUM): explore checks the model and output paths first, and creates nothing on bad input -------------------
def test_explore_bad_model_or_output_or_data_exit_2_creating_nothing(tiny, tmp_path, no_model_loads, capsys):
    (tmp_path / "afile").write_text("x")
    data = ["--data_dir", str(tiny / "SST-2"), "--model_name_or_path", str(tiny / "model")]
    cases = [
        (["--data_dir", str(tiny / "SST-2"), "--model_name_or_path", "/nonexistent/model"], "--model_name_or_path"),
        ([*data, "--task", "MNLI"], "--task"),
        ([*data, "--num_samples", "2", "--max_steps", "1"], "--output_dir"),
    ]
    for options, option in cases:
        out = tmp_path / "afile" if option == "--output_dir" else tmp_path / "out"
        code = main(["explore", *options, "--output_dir", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and option in err and "Traceback" not in err, err
        assert not (tmp_path / "out").exists()
    bad = glue_copy(tiny, tmp_path, train_text="sentence\tlabel\nno label column here\n")
    code = main(["explore", "--data_dir", str(bad), "--output_dir", str(tmp_path / "out")])
    assert code == 2 and "--data_dir" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_explore_quiet_turns_progress_bars_and_info_logs_off(tmp_path, monkeypatch, capsys):
    import logging

    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")
    verbosity = transformers.logging.get_verbosity()
    root_level = logging.getLogger().level
    transformers.logging.set_verbosity_info()
    try:
        main(["explore", "--data_dir", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "o"), "-q"])
        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
        assert transformers.logging.get_verbosity() == transformers.logging.WARNING
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.logging.enable_progress_bar()
        logging.getLogger().setLevel(root_level)


# 6, 7, 8 (LOW): checks before the model loads ------------------------------------------------------------------------
def test_a_budget_count_larger_than_the_model_is_refused_before_loading(tiny, no_model_loads, capsys, tmp_path):
    out = ["--output_dir", str(tmp_path / "o")]
    for command in ("train", "calibrate", "search"):
        code, _, err = run([command, *tiny_args(tiny)[:4], "--budget", "1e12", *out], capsys)
        last = err.strip().splitlines()[-1]
        assert code == 2 and "--budget" in last and "parameters" in last, (command, err)


def test_search_budget_inf_is_a_usage_error(tiny, no_model_loads, capsys, tmp_path):
    code, _, err = run(
        ["search", *tiny_args(tiny)[:4], "--budget", "inf", "--output_dir", str(tmp_path / "o")], capsys
    )
    assert code == 2 and "--budget" in err.strip().splitlines()[-1], err


@pytest.mark.parametrize("content", ["{\n", "[1, 2]"], ids=["invalid", "list"])
def test_a_malformed_adapter_config_is_a_clear_usage_error(content, tiny, tmp_path, no_model_loads, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(content)
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    for argv in (["report", str(adapter)], ["train", *tiny_args(tiny)[:4], "--adapter", str(adapter)]):
        code, _, err = run([*argv, "--output_dir", str(tmp_path / "o")] if argv[0] == "train" else argv, capsys)
        last = err.strip().splitlines()[-1]
        assert code == 2 and "adapter_config.json" in last and ("valid JSON" in last or "JSON list" in last), last


def test_a_missing_data_folder_is_reported_without_importing_transformers(tmp_path):
    script = (
        "import sys; from adapters_hub.cli import main; code = main(['train', '--data', sys.argv[1]]); "
        "print(code, 'transformers' in sys.modules, 'trainer_ext' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "missing")], capture_output=True, text=True, timeout=120
    )
    assert result.stdout.split() == ["2", "False", "False"], result.stdout + result.stderr[-2000:]


# 11 (LOW): options that conflict with the adapter or do not apply to the method --------------------------------------
def test_options_that_do_not_apply_or_conflict_are_errors(tiny, tmp_path, no_model_loads, capsys):
    selection = tmp_path / "selection"
    selection.mkdir()
    config = {"peft_type": "SAMTUNING", "budget": 0.02, "score": "fisher", "scope": "global"}
    (selection / "adapter_config.json").write_text(json.dumps(config))
    (selection / "adapter_model.safetensors").write_bytes(b"")
    base = [*tiny_args(tiny)[:4], "--output_dir", str(tmp_path / "o")]
    cases = [
        (["--method", "sam", "--preset", "lora"], "--preset"),
        (["--score", "fisher"], "--score"),
        (["--calibration_batches", "4"], "--calibration_batches"),
        (["--adapter", str(selection), "--budget", "0.01"], "--budget"),
        (["--adapter", str(selection), "--method", "designspace"], "--method"),
        (["--adapter", str(selection), "--preset", "lora"], "--preset"),
        (["--adapter", str(selection), "--score", "sam"], "--score"),
    ]
    for extra, option in cases:
        code, _, err = run(["train", *base, *extra], capsys)
        last = err.strip().splitlines()[-1]
        assert code == 2 and option in last, (extra, last)
    assert not (tmp_path / "o").exists()


# 12 (LOW): SIGTERM cleans up like Ctrl-C; folders of killed runs are removed later ----------------------------------
def test_sigterm_leaves_no_temporary_folder(tiny, tmp_path):
    script = f"""
import os, signal, sys, time
import trainer_ext.glue_train as glue_train
from adapters_hub.cli import main

def train_glue(settings, data, write_dir=None):
    open(os.path.join(write_dir, "partial.bin"), "w").write("x")
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
    raise SystemExit("SIGTERM was not turned into an interrupt")

glue_train.train_glue = train_glue
sys.exit(main(["train", "--data", {str(tiny / "SST-2")!r}, "--model", {str(tiny / "model")!r},
               "--output_dir", {str(tmp_path / "out")!r}, "-q"]))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 130, (result.returncode, result.stderr[-2000:])
    assert "SIGTERM" in result.stderr
    assert os.listdir(tmp_path) == []


def test_temporary_folders_of_killed_runs_are_removed(tmp_path):
    stale = tmp_path / ".out.tmp-99999999-abc"  # no such process
    stale.mkdir()
    (stale / "partial.bin").write_text("x")
    with atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "done.txt").write_text("x")
    assert sorted(os.listdir(tmp_path)) == ["out"]


# 13 (LOW): messages and help -----------------------------------------------------------------------------------------
def test_an_unsupported_task_given_with_task_does_not_ask_for_task(tiny, no_model_loads, capsys, tmp_path):
    code, _, err = run(["train", *tiny_args(tiny)[:4], "--task", "MNLI", "--output_dir", str(tmp_path / "o")], capsys)
    last = err.strip().splitlines()[-1]
    assert code == 2 and "--task" in last and "Pass --task" not in last, last


def test_help_texts_are_current_and_do_not_repeat_defaults():
    parser = build_parser()
    assert "once peft_designspace provides" not in parser.format_help()
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        if name != "explore":
            assert "(default: None)" not in sub.format_help(), name


def test_an_export_written_before_the_marker_is_replaced_with_overwrite(tmp_path):
    from adapters_hub._files import EXPORT_INFO

    old = tmp_path / "export"
    old.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors", "README.md", EXPORT_INFO):
        (old / name).write_text("{}\n")
    assert check_output_dir(old, overwrite=True, only_pack_outputs=True) == old
    (old / EXPORT_INFO).unlink()  # a user's own adapter folder: not replaced
    with pytest.raises(FileExistsError, match="does not hold a previous output"):
        check_output_dir(old, overwrite=True, only_pack_outputs=True)


@pytest.mark.skipif(
    not (ROOT.parent / "shared/data/glue/SST-2").is_dir(), reason="needs ../shared/data/glue/SST-2 beside the checkout"
)
def test_main_job_refuses_the_callers_directory_as_output(tmp_path):
    caller = tmp_path / "inside"
    caller.mkdir()
    for target in (".", ".."):
        result = subprocess.run(
            [
                "bash",
                str(ROOT / "scripts" / "main_job.sh"),
                str(ROOT.parent / "shared/data/glue/SST-2"),
                "--output_dir",
                target,
            ],
            cwd=caller,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr[-2000:]
        assert "is the current directory or one of its parents" in result.stderr


def test_example_paths_expand_a_tilde(tiny, tmp_path, monkeypatch):
    import argparse

    from trainer_ext.glue_train import check_example_paths

    home = tmp_path / "home"
    home.mkdir()
    (home / "SST-2").symlink_to(tiny / "SST-2")
    monkeypatch.setenv("HOME", str(home))
    args = argparse.Namespace(data_dir="~/SST-2", task=None, model_name_or_path=str(tiny / "model"),
                              output_dir="~/out", overwrite=False)  # fmt: skip
    check_example_paths(argparse.ArgumentParser(), args)
    assert (args.data_dir, args.output_dir) == (str(home / "SST-2"), str(home / "out"))
