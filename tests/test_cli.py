"""The `peft-designspace` command line: help texts, up-front validation (exit 2 before any model loads), and a tiny
end-to-end train -> report -> export -> calibrate on a saved tiny model and a tiny GLUE folder."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from adapters_hub.cli import build_parser, main

SUBCOMMANDS = ("train", "calibrate", "search", "report", "export", "push")


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_console_script_help_is_instant():
    exe = shutil.which("peft-designspace", path=os.path.dirname(sys.executable))
    assert exe, "the console script is missing: run `pip install -e . --no-deps`"
    start = time.perf_counter()
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and all(c in result.stdout for c in SUBCOMMANDS)
    assert "exit status" in result.stdout
    assert time.perf_counter() - start < 10  # no torch import for --help


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_option_is_documented(command, capsys):
    assert run([command, "--help"], capsys)[0] == 0
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        assert action.help and action.help.strip(), f"{command}: {action.option_strings or action.dest} has no help"
    help_text = capsys.readouterr().out or sub.format_help()
    assert "exit status" in sub.format_help() and help_text is not None


BAD_OPTIONS = [
    (["train", "--data", "{tmp}/missing"], "--data"),
    (["train", "--data", "{tiny}/SST-2", "--model", "{tmp}/no-model"], "--model"),
    (["train", "--data", "{tiny}/SST-2", "--model", "{tiny}/model", "--method", "magic"], "--method"),
    (["train", "--data", "{tiny}/SST-2", "--model", "{tiny}/model", "--preset", "s5"], "--preset"),
    (["train", "--data", "{tiny}/SST-2", "--model", "{tiny}/model", "--budget", "-1"], "--budget"),
    (["train", "--data", "{tiny}/SST-2", "--model", "{tiny}/model", "--budget", "2.5"], "--budget"),
    (["train", "--data", "{tiny}/SST-2", "--model", "{tiny}/model", "--max_steps", "0"], "--max_steps"),
    (["train", "--data", "{tiny}/SST-2", "--model", "{tiny}/model", "--task", "mnli"], "--task"),
    (["train", "--data", "{tiny}/SST-2", "--model", "{tiny}/model", "--output_dir", "{file}"], "--output_dir"),
    (["train", "--data", "{tiny}/SST-2", "--model", "{tiny}/model", "--adapter", "{tmp}"], "--adapter"),
    (["train", "--data", "{tiny}/SST-2", "--model", "{tiny}/model", "--max_steps", "x"], "--max_steps"),
    (["train", "--data", "{tiny}/SST-2", "--model", "{tiny}/model", "--seed", "-1"], "--seed must be an int in [0"),
    (["calibrate", "--data", "{tiny}/SST-2", "--model", "{tiny}/model", "--score", "best"], "--score"),
    (["report", "{tmp}/nothing"], "adapter"),
    (["export", "{tmp}", "--output_dir", "{tmp}/out"], "adapter"),
    (["export", "{tmp}/missing", "--output_dir", "{tmp}/out", "--format", "onnx"], "--format"),
    (["push", "{tmp}", "not a repo"], "adapter"),
]


@pytest.mark.parametrize(("argv", "option"), BAD_OPTIONS, ids=[f"{a[0]}:{o}" for a, o in BAD_OPTIONS])
def test_bad_options_fail_fast_naming_the_option(argv, option, tiny, tmp_path, no_model_loads, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default output folders would go here
    (tmp_path / "a-file").write_text("x")
    argv = [a.format(tmp=tmp_path, tiny=tiny, file=tmp_path / "a-file") for a in argv]
    code, _, err = run(argv, capsys)
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert option in last, last
    assert sorted(os.listdir(tmp_path)) == ["a-file"]  # nothing written


def test_hub_dataset_offline_is_a_clear_usage_error(tiny, tmp_path, no_model_loads, monkeypatch, capsys):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    argv = [
        "train",
        "--data",
        "nyu-mll/glue:sst2",
        "--model",
        str(tiny / "model"),
        "--output_dir",
        str(tmp_path / "o"),
    ]
    code, _, err = run(argv, capsys)
    assert code == 2 and "--data" in err and "local GLUE folder" in err, err
    assert not (tmp_path / "o").exists()


def test_train_report_export_end_to_end(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = ["--data", str(tiny / "SST-2"), "--model", str(tiny / "model"), "--batch_size", "8", "-q"]
    code, out, err = run(["train", *common, "--preset", "lora", "--budget", "0.05", "--max_steps", "3"], capsys)
    assert code == 0, err[-2000:]
    summary = next(line for line in out.splitlines() if line.startswith("SUMMARY"))
    assert "method=designspace preset=lora" in summary and "adapter=outputs/designspace-lora-SST-2/adapter" in summary
    out_dir = tmp_path / "outputs" / "designspace-lora-SST-2"
    assert json.loads((out_dir / "results.json").read_text())["reload_ok"] is True
    assert sorted(os.listdir(tmp_path / "outputs")) == ["designspace-lora-SST-2"]  # no temporary folder left

    code, out, err = run(["train", *common, "--preset", "lora", "--max_steps", "1"], capsys)
    # exists: refused up front
    assert code == 2 and "--overwrite" in err

    code, out, _ = run(["report", str(out_dir / "adapter")], capsys)
    assert code == 0 and "budget report" in out and "lora" in out and "█" in out
    code, out, _ = run(["report", str(out_dir / "adapter"), "--json"], capsys)
    assert json.loads(out)["columns"] == ["lora"]

    code, out, err = run(
        ["export", str(out_dir / "adapter"), "--output_dir", "exported", "--model", str(tiny / "model")], capsys
    )
    assert code == 0, err[-2000:]
    assert "format=lora exact=True" in out
    assert float(out.split("max_abs_diff=")[1].split()[0]) < 1e-6
    assert json.loads((tmp_path / "exported" / "adapter_config.json").read_text())["peft_type"] == "LORA"


def test_calibrate_then_export_sam(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["calibrate", "--data", str(tiny / "SST-2"), "--model", str(tiny / "model"), "--budget", "0.02"]
    code, out, err = run([*argv, "--calibration_batches", "2", "--batch_size", "8", "-q"], capsys)
    assert code == 0, err[-2000:]
    assert "CALIBRATED" in out and "train --data" in out
    adapter = tmp_path / "outputs" / "sam-calibration-SST-2" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["nnz_pattern"]
    code, out, _ = run(["report", str(adapter)], capsys)
    assert code == 0 and "selected entries" in out
    code, out, err = run(["export", str(adapter), "--output_dir", "merged", "--format", "merged", "-q"], capsys)
    assert code == 0 and "format=merged exact=True" in out, err[-2000:]
    assert (tmp_path / "merged" / "model.safetensors").is_file()


def test_search_runs_or_says_it_is_unavailable(tiny, tmp_path, capsys, monkeypatch):
    import peft_designspace

    monkeypatch.delattr(peft_designspace, "S3PETConfig", raising=False)
    argv = [
        "search",
        "--data",
        str(tiny / "SST-2"),
        "--model",
        str(tiny / "model"),
        "--output_dir",
        str(tmp_path / "s"),
    ]
    code, _, err = run(argv, capsys)
    assert code == 3 and "not available yet" in err
    assert not (tmp_path / "s").exists()


def test_explore_subcommand_is_listed_and_fails_fast_on_a_missing_folder(tmp_path, capsys):
    from adapters_hub.cli import main

    assert main(["explore", "--data_dir", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "out")]) == 2
    assert "holds no train.tsv" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["--help"]) == 0
    assert "explore" in capsys.readouterr().out


def test_train_on_a_sam_selection_records_its_score_and_scope(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["calibrate", "--data", str(tiny / "SST-2"), "--model", str(tiny / "model"), "--budget", "0.02"]
    options = ["--score", "fisher", "--scope", "per_tensor", "--calibration_batches", "2", "--batch_size", "8", "-q"]
    code, _, err = run([*argv, *options, "--output_dir", "selection"], capsys)
    assert code == 0, err[-2000:]
    argv = ["train", "--data", str(tiny / "SST-2"), "--model", str(tiny / "model"), "--adapter", "selection/adapter"]
    code, out, err = run([*argv, "--max_steps", "1", "--output_dir", "run", "-q"], capsys)
    assert code == 0, err[-2000:]
    assert "score=fisher" in out and "scope=per_tensor" in out, out


def test_the_task_is_inferred_from_a_relative_data_folder(tiny, monkeypatch):
    from trainer_ext.glue_train import infer_task

    monkeypatch.chdir(tiny / "SST-2")
    assert infer_task(".", None) == "SST-2"
    monkeypatch.chdir(tiny / "SST-2" / "..")
    assert infer_task("SST-2/.", None) == "SST-2"


def test_a_tilde_in_an_option_is_the_home_folder(tmp_path, monkeypatch):
    # `--output_dir=~/x` reaches the program unexpanded: it wrote into a folder named `~` in the current directory
    import adapters_hub.cli as cli

    seen = {}
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setitem(cli.COMMANDS, "report", lambda parser, args: seen.update(vars(args)) or 0)
    assert main(["report", "~/adapter", "--plot=~/figs/h.png"]) == 0
    assert seen["adapter"] == str(tmp_path / "home" / "adapter")
    assert seen["plot"] == str(tmp_path / "home" / "figs" / "h.png")


@pytest.mark.parametrize(
    ("model", "message"),
    [
        # ids no cache holds (a cached bert-base-uncased would pass the check); like `bert-base-uncased`, the first
        # has no namespace
        ("no-such-model-of-peft-designspace", "HF_HUB_OFFLINE is set and the model is not in the local cache"),
        ("peft-designspace/no-such-model", "HF_HUB_OFFLINE is set and the model is not in the local cache"),
        ("me/bert--base", "neither a model folder nor a Hub model id"),  # the Hub refuses '--' and '..'
        ("me/bert.", "neither a model folder nor a Hub model id"),
    ],
)
def test_model_ids_follow_the_hubs_rules(model, message, tiny, tmp_path, no_model_loads, monkeypatch, capsys):
    """`--model bert-base-uncased` (a Hub id without a namespace) was refused as neither a folder nor an id."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["train", "--data", str(tiny / "SST-2"), "--model", model], capsys)
    assert code == 2 and "--model" in err and message in err, err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("data", ["nyu-mll/gl--ue:sst2", "me/glue.git", "me/glue:", "me/glue:sst 2", "a/b/c"])
def test_dataset_names_the_hub_refuses_are_usage_errors(data, tiny, tmp_path, no_model_loads, monkeypatch, capsys):
    """`--data a--b` passed its own pattern (not the Hub's rules) and failed only when the dataset was fetched."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["train", "--data", data, "--model", str(tiny / "model")], capsys)
    assert code == 2 and f"--data {data!r} is not a folder (nor a Hub dataset name" in err, err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("repo_id", ["me/my--adapter", "me/adapter.git", "adapter", "me/a/b", "me/.adapter"])
def test_push_refuses_repo_ids_the_hub_refuses(repo_id, tiny, tmp_path, no_model_loads, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    code, _, err = run(["push", str(adapter), repo_id], capsys)
    assert code == 2 and f"repo_id {repo_id!r} must be namespace/name" in err, err


def test_export_overwrite_of_a_non_export_is_refused_before_loading(tiny, tmp_path, no_model_loads, capsys):
    """`export --overwrite` onto a training run's folder loaded the model and ran the export, then failed with exit 1
    (the export's own check); it is now a usage error, exit 2, before anything loads (a docs review, 2026-11-25)."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".peft-designspace-output").write_text("")
    (run_dir / "budget_report.json").write_text("{}")
    argv = ["export", str(adapter), "--output_dir", str(run_dir), "--overwrite", "--model", str(tiny / "model")]
    code, _, err = run(argv, capsys)
    assert code == 2 and "--output_dir" in err and "not an export" in err, err
    assert sorted(p.name for p in run_dir.iterdir()) == [".peft-designspace-output", "budget_report.json"]
