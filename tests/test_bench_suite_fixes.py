"""Faults found in review of the benchmark suite (bench/suite): cached results reused across settings, stale
skipped records, usage errors that were tracebacks or run failures, and report figures that mislabelled or
omitted. The runner tests train a tiny BERT on a tiny SST-2 folder (`tiny` in conftest.py), under a second a run."""

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
from test_bench_suite import plan, report, run  # the suite's modules, from bench/suite

TINY_SETTINGS = ["max_steps=1", "eval_every=1", "max_train_samples=16", "validation_samples=8", "max_dev_samples=8"]
TINY_SETTINGS += ["lr_multipliers=[1]", "seeds=[0]", "batch_size=4", "timing_warmup_steps=0", "num_threads=1"]


@pytest.fixture
def tiny_suite(tiny, tmp_path):
    """`run.main` argv for a one-run suite on the tiny model (a LoRA experiment in its own folder)."""
    experiment = tmp_path / "exps" / "lora" / "b"
    experiment.mkdir(parents=True)
    (experiment / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    argv = ["--backbone", str(tiny / "model"), "--data-dir", str(tiny), "--tasks", "SST-2", "--no-progress"]
    argv += ["--experiments-dir", str(tmp_path / "exps"), "--results-dir", str(tmp_path / "res")]
    return argv, tmp_path / "res" / "model" / "SST-2" / "lora" / "b"


def _one_run(folder: Path) -> Path:
    files = sorted(folder.glob("lr=*.json"))
    assert len(files) == 1, files
    return files[0]


# 3: a cached result counts only when made with the same settings -------------------------------------------------
def test_finished_run_of_other_training_params_is_refused(tiny_suite, capsys):
    argv, folder = tiny_suite
    assert run.main([*argv, "--set", *TINY_SETTINGS]) == 0
    result = _one_run(folder)
    before = result.read_bytes()
    assert run.main([*argv, "--set", *TINY_SETTINGS, "max_steps=2"]) == 2
    err = capsys.readouterr().err
    assert "max_steps 1 → 2" in err and str(result) in err and "--results-dir" in err, err
    assert result.read_bytes() == before
    assert run.main([*argv, "--set", *TINY_SETTINGS, "num_threads=2"]) == 0  # the cores used are no setting
    assert "cached 1" in capsys.readouterr().out


def test_finished_run_of_another_config_is_refused(tiny_suite, tmp_path, capsys):
    argv, folder = tiny_suite
    assert run.main([*argv, "--set", *TINY_SETTINGS]) == 0
    (tmp_path / "exps" / "lora" / "b" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    assert run.main([*argv, "--set", *TINY_SETTINGS]) == 2
    assert "config.r 2 → 4" in capsys.readouterr().err
    assert json.loads(_one_run(folder).read_text())["run_info"]["config"]["r"] == 2


def test_s3pet_structure_is_searched_again_for_other_settings():
    params = {**plan.task_params(plan.load_defaults(), "SST-2"), "search_steps": 4}
    key = plan.settings_key(plan.settings_of(params, {"peft_type": "S3PET", "budget": 10}))
    assert run._structure_is_current({"settings": key}, "search", params, key)
    assert not run._structure_is_current({"settings": "0" * 12}, "search", params, key)
    legacy = {"info": {"kind": "search", "seed": 0, "steps": 200, "learning_rate": 0.003, "seconds": 9.0}}
    assert not run._structure_is_current(legacy, "search", params, key)  # a 200-step search, 4 wanted
    assert run._structure_is_current(legacy, "search", {**params, "search_steps": 200}, key)


def _result(
    experiment, lr, seed, dev, phase="sweep", status="ok", created="2026-01-01T00:00:00", params=None, **train
):
    info = {"experiment": experiment, "family": experiment.split("/")[0], "ours": not experiment.startswith("lora"),
            "budget": 0.01, "backbone": "bb", "task": "SST-2", "learning_rate": lr, "seed": seed, "status": status,
            "phase": phase, "label": experiment, "backbone_params": 1000, "total_time_s": 1.0,
            "training_params": params or {}, "created_at": created}  # fmt: skip
    values = {"metric": "accuracy", "dev_metric": dev, "val_metric": dev, "trainable_params": 10, "step_time_s": 0.1,
              "step_cpu_time_s": 0.1, "train_memory_growth_mib": 5.0, "adapter_file_bytes": 100, **train}  # fmt: skip
    meta = {"device": "cpu", "package_versions": {"peft": "0"}, "git_revision": "abc"}
    return {"run_info": info, "train_info": values, "meta_info": meta}


def _dump(root: Path, results: list[dict]) -> Path:
    for i, result in enumerate(results):
        folder = root / "bb" / "SST-2" / result["run_info"]["experiment"]
        folder.mkdir(parents=True, exist_ok=True)
        name = "skipped" if result["run_info"]["status"] == "skipped" else f"{i:02d}"
        (folder / f"{name}.json").write_text(json.dumps(result))
    return root


def _row(root: Path, experiment: str = "lora/b") -> "report.Row":
    return next(r for r in report.load_rows(root)[("bb", "SST-2")] if r.experiment == experiment)


def test_report_takes_the_rate_the_sweep_chose(tmp_path):
    # the first sweep chose 1e-3 and ran seed 1 there; a failed 1e-2 sweep run was retried later and won
    _dump(
        tmp_path,
        [
            _result("lora/b", 1e-3, 1, 0.70, phase="seed"),
            _result("lora/b", 1e-3, 0, 0.80),
            _result("lora/b", 1e-2, 0, 0.90, created="2026-01-02T00:00:00"),
            _result("lora/b", 1e-2, 1, 0.86, phase="seed", created="2026-01-02T00:00:00"),
        ],
    )
    row = _row(tmp_path)
    assert row.info["learning_rate"] == 1e-2
    assert sorted(r["run_info"]["seed"] for r in row.runs) == [0, 1]
    assert math.isclose(row.mean_std("dev_metric")[0], 0.88)


def test_report_keeps_the_runs_of_one_settings_set(tmp_path, capsys):
    old, new = {"max_steps": 4}, {"max_steps": 2}
    _dump(
        tmp_path,
        [
            _result("lora/b", 1e-3, 0, 0.95, params=old),
            _result("lora/b", 1e-3, 1, 0.95, phase="seed", params=old),
            _result("lora/b", 1e-2, 0, 0.60, params=new, created="2026-01-02T00:00:00"),
            _result("lora/b", 3e-2, 0, 0.50, params=new, created="2026-01-02T00:00:00"),
        ],
    )
    row = _row(tmp_path)
    assert row.sweep == {1e-2: 0.60, 3e-2: 0.50}
    assert [r["run_info"]["learning_rate"] for r in row.runs] == [1e-2]
    assert "2 run(s) made with other settings" in capsys.readouterr().err


# 4: a stale skipped.json does not hide runs that succeeded --------------------------------------------------------
def test_a_cell_that_resolves_removes_its_skipped_record(tiny_suite):
    argv, folder = tiny_suite
    folder.mkdir(parents=True)
    (folder / "skipped.json").write_text(json.dumps({"run_info": {"status": "skipped", "reason": "too small"}}))
    assert run.main([*argv, "--set", *TINY_SETTINGS]) == 0
    assert not (folder / "skipped.json").exists()
    assert _one_run(folder).is_file()


def test_report_prefers_finished_runs_over_a_skipped_record(tmp_path):
    skipped = _result("ours/b", None, None, None, status="skipped")
    skipped["run_info"]["reason"] = "InfeasibleBudgetError: too small"
    _dump(tmp_path, [_result("lora/b", 1e-3, 0, 0.8), skipped, _result("ours/b", 1e-3, 0, 0.7)])
    row = _row(tmp_path, "ours/b")
    assert row.skipped is None and len(row.runs) == 1
    assert "did not run" not in "\n".join(report.losses(report.load_rows(tmp_path)[("bb", "SST-2")]))


# 6: usage errors exit 2 with one line naming the option and the value --------------------------------------------
USAGE = [
    (["--tasks", "MNLI"], "--tasks 'MNLI'"),
    (["--set", "seeds=[]"], "--set seeds=[]: seeds must be a non-empty list"),
    (["--set", "lr_multipliers=3"], "--set lr_multipliers=3: lr_multipliers must be a non-empty list"),
    (["--set", "max_steps=x"], '--set max_steps="x": max_steps must be an int >= 1'),
    (["--set", "learning_rate_base=-1"], "learning_rate_base must be a number > 0"),
    (["--device", "gpu"], "--device 'gpu': must be cpu, cuda or cuda:N"),
]


@pytest.mark.parametrize(("extra", "message"), USAGE, ids=[m.split(":")[0] for _, m in USAGE])
def test_usage_errors_exit_2_naming_the_option(extra, message, tmp_path, capsys):
    argv = ["--results-dir", str(tmp_path / "r"), "--data-dir", str(tmp_path), "--dry-run", *extra]
    assert run.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_device_is_checked_before_the_backbone_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run, "resolve_backbone", lambda *a, **k: pytest.fail("the backbone was loaded"))
    argv = ["--device", "cuda", "--results-dir", str(tmp_path / "r"), "--data-dir", str(tmp_path), "--no-progress"]
    assert run.main(argv) == 2
    assert "--device 'cuda': CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


class FakeWorker:
    codes: list[int] = []

    def __init__(self, command):
        self.code = FakeWorker.codes.pop(0)

    def wait(self) -> int:
        return self.code


def test_workers_report_a_usage_error_once_without_starting(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("a worker was started"))
    argv = ["--workers", "2", "--set", "foo=1", "--results-dir", str(tmp_path / "r"), "--data-dir", str(tmp_path)]
    assert run.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("foo") == 1 and "unknown training params" in err, err


@pytest.mark.parametrize(("codes", "expected"), [([2, 2], 2), ([0, 2], 1), ([1, 0], 1), ([0, 0], 0)])
def test_parent_exit_status_follows_the_workers(codes, expected, tmp_path, monkeypatch):
    FakeWorker.codes = list(codes)
    monkeypatch.setattr(subprocess, "Popen", FakeWorker)
    argv = ["--workers", "2", "--experiments", "lora/*", "--results-dir", str(tmp_path / "r")]
    assert run.main([*argv, "--data-dir", str(tmp_path)]) == expected


# 9: the report's loss list, header, reproduce line and plots -----------------------------------------------------
def test_losses_use_the_ratio_the_table_shows_and_list_memory(tmp_path):
    _dump(
        tmp_path,
        [
            _result("lora/b", 1e-3, 0, 0.8),
            _result("ours/b", 1e-3, 0, 0.9, step_cpu_time_s=0.11049, train_memory_growth_mib=5.5249),
            _result("slow/b", 1e-3, 0, 0.9, step_cpu_time_s=0.1116, train_memory_growth_mib=6.75),
        ],
    )
    rows = report.load_rows(tmp_path)[("bb", "SST-2")]
    table, text = "\n".join(report.speed_table(rows)), "\n".join(report.losses(rows))
    assert "| ours/b | ★ | 1% | 110 | 1.10× | 6 | 1.10× |" in table
    assert "ours/b" not in text  # shown as 1.10×: not above 1.10
    assert "- slow/b: steps 1.12× slower than PEFT LoRA." in text
    assert "- slow/b: training memory growth 1.35× that of PEFT LoRA." in text


def test_report_header_names_its_results_and_output(tmp_path):
    results = _dump(tmp_path / "results", [_result("lora/b", 1e-3, 0, 0.8), _result("ours/b", 1e-3, 0, 0.7)])
    output = tmp_path / "out" / "b.md"
    assert report.main(["--results-dir", str(results), "--output", str(output)]) == 0
    text = output.read_text()
    assert f"Generated by bench/suite/report.py from {results};" in text
    assert f"Regenerate: `python bench/suite/report.py --results-dir {results} --output {output}`" in text
    assert report.regenerate_command(report.RESULTS_DIR, report.OUTPUT) == "python bench/suite/report.py"
    assert report.display_path(report.RESULTS_DIR) == "bench/suite/results"  # the committed page's header


def _recorded(task: str, **changes) -> dict:
    defaults = plan.load_defaults()
    params = plan.task_params({k: v for k, v in defaults.items() if k != "default_tasks"}, task)
    return {**params, "num_threads": 1, **changes}


def test_reproduce_line_carries_the_settings_of_the_results(tmp_path):
    params = _recorded("SST-2", max_steps=4, batch_size=8)
    results = [
        _result("lora/budget-0.05pct", lr, seed, 0.8, phase=phase, params=params)
        for lr, seed, phase in ((1e-3, 0, "sweep"), (3e-3, 0, "sweep"), (1e-3, 1, "seed"))
    ]
    root = _dump(tmp_path / "r", results)
    text = report.write_report(root, tmp_path / "b.md").read_text()
    assert (
        'Reproduce: `python bench/suite/run.py --backbone bb --tasks SST-2 --experiments "lora/budget-0.05pct" '
        "--set batch_size=8 'lr_multipliers=[1,3]' max_steps=4 'seeds=[0,1]' --workers 2`"
    ) in text
    rows = report.load_rows(root)[("bb", "SST-2")]
    experiments = {e.name: e for e in plan.load_experiments()}
    assert report.settings_arguments(rows, "SST-2", experiments) == [
        "batch_size=8", "lr_multipliers=[1,3]", "max_steps=4", "seeds=[0,1]"
    ]  # fmt: skip
    made = [(1e-3, 0, "sweep", 0.8), (3e-3, 0, "sweep", 0.7), (1e-2, 0, "sweep", 0.6), (1e-3, 1, "seed", 0.8)]
    made += [(1e-3, 2, "seed", 0.8)]
    defaults = [_result("lora/budget-0.05pct", *run_, params=_recorded("SST-2")) for run_ in made]
    rows = report.load_rows(_dump(tmp_path / "d", defaults))[("bb", "SST-2")]
    assert report.settings_arguments(rows, "SST-2", experiments) == []  # made with the defaults: nothing to add
    rte = [report.Row("bb", "RTE", "lora/budget-0.05pct", {"training_params": _recorded("RTE", max_steps=150)})]
    rte[0].runs = [{"run_info": {"seed": s}} for s in (0, 1, 2)]
    rte[0].sweep = {1e-3: 0.5, 3e-3: 0.5, 1e-2: 0.5}
    rte[0].info["training_params"].update(eval_every=50, validation_samples=300)  # as `--set 'per_task={}'` makes
    assert report.settings_arguments(rte, "RTE", experiments) == ["max_steps=150", "per_task={}"]


def test_plots_are_written_atomically(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    _dump(tmp_path, [_result("lora/b", 1e-3, 0, 0.8)])
    rows = report.load_rows(tmp_path)[("bb", "SST-2")]
    png = tmp_path / "plots" / "cost.png"
    png.parent.mkdir()
    png.write_bytes(b"the committed plot")

    def interrupted(self, fname, **kwargs):
        Path(fname).write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt

    import matplotlib.figure

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", interrupted)
    with pytest.raises(KeyboardInterrupt):
        report.plot_cost(rows, png, "title")
    assert png.read_bytes() == b"the committed plot"
    assert sorted(p.name for p in png.parent.iterdir()) == ["cost.png"]
