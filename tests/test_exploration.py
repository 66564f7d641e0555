"""Design-space exploration: sampling (uniformity, budget, seed), EDFs, stage selection, evaluation and resume."""

import argparse
import json
import math
import os
import re
import statistics
from collections import Counter

import pytest
from peft import get_peft_model

import peft_designspace  # noqa: F401  (registers the method)
from peft_designspace import DesignSpaceConfig
from peft_designspace.designspace.refine import Stage, edf, edf_curve, paper_stages, select_best, summarize
from peft_designspace.designspace.space import DesignSampler, DesignSpace, design_config, design_key
from tests.tiny_models import make_model
from trainer_ext.explore import ExploreSettings, evaluate_designs, explore_main, run_exploration
from trainer_ext.explore_eval import evaluate_design, result_key

BUDGET = 0.05  # of a tiny 8-layer BERT (hidden 32): about 3.8k parameters


@pytest.fixture(scope="module")
def model():
    return make_model("bert", "SEQ_CLS", hidden=32, layers=8)


@pytest.fixture(scope="module")
def sampler(model):
    return DesignSampler(model, BUDGET)


def small_space(**overrides) -> DesignSpace:
    data = {
        "groupings": ["spindle", "uniform"],
        "allocations": ["uniform"],
        "tunable_groups": [[0, 1, 2, 3]],
        "group_strategies": [[["adapter"], ["lora"]], [["adapter"]], [["lora"]], [["adapter"]]],
    }
    return DesignSpace.from_dict({**data, **overrides})


# sampling ------------------------------------------------------------------------------------------------------------


def test_sampling_is_uniform_over_the_space(sampler):
    designs = sampler.sample(small_space(), 800, seed=0)
    counts = Counter((d["grouping"], tuple(d["group_strategies"][0])) for d in designs)
    assert len(counts) == 4
    chi2 = sum((c - 200) ** 2 / 200 for c in counts.values())
    assert chi2 < 16.3  # chi-square, 3 degrees of freedom, p = 0.001


def test_sampling_is_uniform_over_the_designs_that_meet_the_budget(sampler):
    # BitFit alone has a fixed cost far from the budget: those designs are rejected, the others stay uniform
    space = small_space(
        tunable_groups=[[0]],
        group_strategies=[[["bitfit"], ["adapter"], ["lora"]], [["adapter"]], [["adapter"]], [["adapter"]]],
    )
    designs = sampler.sample(space, 600, seed=1)
    counts = Counter(tuple(d["group_strategies"][0]) for d in designs)
    assert set(counts) == {("adapter",), ("lora",)}
    assert abs(counts[("adapter",)] - 300) < 60


def test_every_sample_meets_the_budget(model, sampler):
    designs = sampler.sample(DesignSpace(), 12, seed=3)
    for design in designs:
        realised = sampler.realised(design)
        assert abs(realised / sampler.target - 1) <= 0.05
    for design in designs[:3]:  # the sampler's count is the one the real adapter gets
        peft_model = get_peft_model(make_model("bert", "SEQ_CLS"), design_config(design, BUDGET, task_type="SEQ_CLS"))
        report = peft_model.base_model.budget_report()
        assert report.realised == sampler.realised(design)
        assert abs(report.relative_error) <= 0.05


def test_sampling_is_reproducible_from_the_seed(sampler):
    first = sampler.sample(DesignSpace(), 10, seed=7)
    assert first == sampler.sample(DesignSpace(), 10, seed=7)
    assert first != sampler.sample(DesignSpace(), 10, seed=8)


def test_design_key_ignores_strategies_of_untuned_groups():
    a = {"grouping": "spindle", "allocation": "uniform", "tunable_groups": [0], "group_strategies": [["lora"]] * 4}
    b = {**a, "group_strategies": [["lora"], ["adapter"], ["prefix"], ["bitfit"]]}
    assert design_key(a) == design_key(b)
    assert design_key(a) != design_key({**a, "allocation": "increasing"})


# bad input -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"groupings": []}, "`groupings` is empty"),
        ({"group_strategies": [[], [["lora"]], [["lora"]], [["lora"]]]}, r"`group_strategies\[0\]` is empty"),
        ({"num_groups": 2}, "contradicts `num_groups=2`"),
        ({"groupings": [[1, 2, 3]]}, "contradict"),
        ({"tunable_groups": [[0, 4]]}, "contradicts `num_groups=4`"),
        ({"allocations": ["uniform", "uniform"]}, "twice"),
        ({"group_strategies": [[["dropout"]]] * 4}, "non-empty lists out of"),
    ],
)
def test_bad_spaces_are_clear_errors(kwargs, match):
    if kwargs.get("num_groups") == 2:
        kwargs = {**kwargs, "groupings": ["spindle"], "group_strategies": None}
    with pytest.raises(ValueError, match=match):
        DesignSpace(**kwargs)


def test_contradictory_constraint_is_a_clear_error():
    space = DesignSpace().constrain("grouping", "spindle")
    with pytest.raises(ValueError, match="contradicts the space"):
        space.constrain("grouping", "uniform")


def test_budget_no_design_meets_is_a_clear_error(model):
    with pytest.raises(ValueError, match="is met by 0 of"):
        DesignSampler(model, 3).sample(DesignSpace(), 2, seed=0)
    with pytest.raises(ValueError, match="is met by 0 of"):  # a fixed BitFit cost can never reach this budget
        DesignSampler(model, BUDGET).sample(small_space(group_strategies=[[["bitfit"]]] * 4), 2, seed=0)


def test_fewer_than_two_samples_is_a_clear_error(sampler, model, tmp_path):
    with pytest.raises(ValueError, match="`num_samples` must be an int >= 2"):
        sampler.sample(DesignSpace(), 1, seed=0)
    with pytest.raises(ValueError, match="`num_samples` must be an int >= 2"):
        run_exploration(ExploreSettings(data_dir="unused"), str(tmp_path), num_samples=1, model=model)
    with pytest.raises(SystemExit) as exit_info:
        explore_main(["--data_dir", "x", "--output_dir", str(tmp_path), "--num_samples", "1", "--quiet"])
    assert exit_info.value.code == 2


# EDF and stage selection ---------------------------------------------------------------------------------------------


def test_edf_and_summary():
    errors = [0.3, 0.1, 0.2, 0.2]
    assert edf(errors, 0.2) == 0.25  # strictly below
    assert edf(errors, 0.25) == 0.75
    assert edf(errors, 1.0) == 1.0
    assert edf_curve(errors) == ([0.1, 0.2, 0.3], [0.25, 0.75, 1.0])
    stats = summarize(errors)
    assert math.isclose(stats["mean"], statistics.mean(errors))
    assert math.isclose(stats["std"], statistics.stdev(errors))
    assert (stats["min"], stats["median"], stats["max"], stats["n"]) == (0.1, 0.2, 0.3, 4)
    with pytest.raises(ValueError, match="empty"):
        edf([], 0.1)


def test_select_best_uses_mean_then_median_then_order():
    assert select_best({"a": [0.3, 0.3], "b": [0.1, 0.4], "c": [0.5, 0.2]}) == "b"
    assert select_best({"a": [0.1, 0.3, 0.5], "b": [0.29, 0.29, 0.32]}) == "b"  # equal means: lower median
    assert select_best({"a": [0.2, 0.2], "b": [0.2, 0.2]}) == "a"
    with pytest.raises(ValueError, match="empty"):
        select_best({})


FAVOURED = [["adapter", "lora"], ["lora"], ["adapter"], ["adapter", "lora"]]


def synthetic_error(design: dict) -> float:
    """Lowest for spindle, uniform allocation, all groups and the FAVOURED strategies; no noise."""
    error = 0.30
    error -= {"spindle": 0.05, "uniform": 0.02}.get(design["grouping"], 0.0)
    error -= 0.03 if design["allocation"] == "uniform" else 0.0
    error -= 0.01 * len(design["tunable_groups"])
    for g in design["tunable_groups"]:
        error -= 0.01 * (sorted(design["group_strategies"][g]) == FAVOURED[g])
    return error


def test_exploration_with_synthetic_scores_refines_and_resumes(model, tmp_path):
    space = DesignSpace(group_strategies=[[["adapter"], ["lora"], ["adapter", "lora"]]] * 4)
    settings = ExploreSettings(data_dir="unused", budget=BUDGET)
    kwargs = {"space": space, "num_samples": 6, "evaluator": synthetic_error, "model": model, "progress": False}
    result = run_exploration(settings, str(tmp_path), **kwargs)
    assert [s.stage for s in result.stages] == [s.name for s in paper_stages(4)]
    assert [s.best for s in result.stages] == [
        "spindle",
        "uniform",
        "G1+G2+G3+G4",
        "adapter+lora",
        "lora",
        "adapter",
        "adapter+lora",
    ]
    assert result.stages[-1].notes == []  # the last stage compares single-design spaces
    assert result.final_space.size == 1
    assert result.best_design["group_strategies"] == FAVOURED
    for outcome in result.stages:
        assert os.path.isfile(outcome.plot)
        assert set(outcome.summaries) == set(outcome.candidates)
    report = open(result.report_path).read()
    assert report.count("## Stage") == 7 and "(kept)" in report
    reloaded = DesignSpaceConfig.from_pretrained(str(tmp_path / "best_config"))
    assert (reloaded.grouping, reloaded.allocation, reloaded.group_strategies) == ("spindle", "uniform", FAVOURED)
    assert json.load(open(tmp_path / "final_space.json"))["groupings"] == ["spindle"]
    assert result.evaluated == len(os.listdir(tmp_path / "results"))

    again = run_exploration(settings, str(tmp_path), **kwargs)  # a re-run evaluates nothing
    assert again.evaluated == 0
    assert again.best_design == result.best_design


def test_stage_of_an_untuned_group_is_skipped(model, tmp_path):
    space = small_space(tunable_groups=[[0]], group_strategies=[[["adapter"], ["lora"]]] * 4)
    stages = [Stage("group_strategies", 0), Stage("group_strategies", 1)]
    result = run_exploration(
        ExploreSettings(data_dir="unused", budget=BUDGET),
        str(tmp_path),
        space=space,
        num_samples=2,
        stages=stages,
        evaluator=lambda d: 0.1 if d["group_strategies"][0] == ["lora"] else 0.2,
        model=model,
        progress=False,
    )
    assert result.stages[0].best == "lora"
    assert "not tuned" in result.stages[1].notes[0]
    # the outcome shows no strategies for the groups the design does not tune (they change nothing)
    assert result.best_design["group_strategies"] == [["lora"], None, None, None]
    assert json.load(open(tmp_path / "best_design.json"))["design"] == result.best_design
    reloaded = DesignSpaceConfig.from_pretrained(str(tmp_path / "best_config"))
    assert (reloaded.tunable_groups, reloaded.group_strategies[0]) == ([0], ["lora"])


def test_a_strategy_stage_before_the_tunable_groups_stage_samples_designs_that_tune_the_group(model, tmp_path):
    space = small_space(tunable_groups=[[0], [1], [0, 1]], group_strategies=[[["adapter"], ["lora"]]] * 4)
    seen = []

    def error(design):
        seen.append(design)
        return 0.1 if design["group_strategies"][0] == ["lora"] else 0.2

    kwargs = {"space": space, "num_samples": 4, "evaluator": error, "model": model, "progress": False}
    settings = ExploreSettings(data_dir="unused", budget=BUDGET)
    result = run_exploration(settings, str(tmp_path), stages=[Stage("group_strategies", 0)], **kwargs)
    assert len(seen) >= 4 and all(0 in d["tunable_groups"] for d in seen)
    assert result.stages[0].best == "lora"
    # the refined space keeps every tunable set for a later tunable-groups stage
    assert result.final_space.group_strategies[0] == [["lora"]]
    assert result.final_space.tunable_groups == [[0], [1], [0, 1]]


# real training: two designs, interrupted and resumed -----------------------------------------------------------------

WORDS = ["good", "great", "fine", "fun", "bad", "awful", "dull", "poor", "film", "plot", "very", "the"]


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory):
    from transformers import BertTokenizer

    folder = tmp_path_factory.mktemp("tiny")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    model_dir = folder / "model"
    BertTokenizer(str(vocab)).save_pretrained(str(model_dir))
    make_model("bert", "SEQ_CLS", hidden=16, layers=4).save_pretrained(str(model_dir))
    data_dir = folder / "SST-2"
    data_dir.mkdir()
    rows = ["sentence\tlabel"]
    for i in range(48):
        positive = i % 2 == 0
        rows.append(f"the film {WORDS[i % 4] if positive else WORDS[4 + i % 4]} very\t{int(positive)}")
    (data_dir / "train.tsv").write_text("\n".join(rows) + "\n")
    (data_dir / "dev.tsv").write_text("\n".join(rows[:9]) + "\n")
    return str(model_dir), str(data_dir)


def test_evaluation_with_trainer_stores_results_and_resumes(tiny_backbone, tmp_path):
    model_dir, data_dir = tiny_backbone
    settings = ExploreSettings(
        data_dir=data_dir,
        model_name_or_path=model_dir,
        budget=300,
        train_samples=24,
        validation_samples=12,
        max_steps=2,
        batch_size=8,
        max_length=16,
    )
    sampler = DesignSampler(make_model("bert", "SEQ_CLS", hidden=16, layers=4), 300)
    designs = sampler.sample(DesignSpace(), 2, seed=0)
    assert design_key(designs[0]) != design_key(designs[1])
    results_dir = str(tmp_path / "results")

    first = evaluate_designs(designs[:1], settings, results_dir, progress=False)  # "interrupted" after one design
    (key1,) = first
    path1 = os.path.join(results_dir, f"{key1}.json")
    stamp = os.stat(path1).st_mtime_ns
    stored = json.load(open(path1))
    assert 0.0 <= stored["error"] <= 1.0 and math.isclose(stored["error"], 1 - stored["accuracy"])
    assert abs(stored["realised"] / stored["target"] - 1) <= 0.05

    resumed = evaluate_designs(designs, settings, results_dir, progress=False)
    assert resumed[key1]["cached"] is True
    assert [r["cached"] for k, r in resumed.items() if k != key1] == [False]
    assert os.stat(path1).st_mtime_ns == stamp  # the finished design was not trained again
    assert len(os.listdir(results_dir)) == 2


def test_command_line_options_build_the_space():
    import argparse

    from trainer_ext.explore import add_explore_arguments, space_from_args, stages_from_args

    parser = add_explore_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        ["--data_dir", "d", "--output_dir", "o", "--groupings", "spindle,uniform", "--tunable_groups", "1234,23"]
        + ["--strategy_sets", "adapter,adapter+lora", "--stages", "grouping,strategies_G2"]
    )
    space = space_from_args(args)
    assert space.groupings == ["spindle", "uniform"]
    assert space.tunable_groups == [[0, 1, 2, 3], [1, 2]]
    assert space.group_strategies == [[["adapter"], ["adapter", "lora"]]] * 4
    assert [s.name for s in stages_from_args(args, 4)] == ["grouping", "strategies_G2"]
    with pytest.raises(ValueError, match="--stages"):
        stages_from_args(parser.parse_args(["--data_dir", "d", "--output_dir", "o", "--stages", "nope"]), 4)


def test_report_only_replays_finished_stages_and_stops_at_missing_results(model, tmp_path):
    space = DesignSpace(group_strategies=[[["adapter"], ["lora"]]] * 4)
    settings = ExploreSettings(data_dir="unused", budget=BUDGET)
    kwargs = {"space": space, "num_samples": 2, "model": model, "progress": False}
    first = run_exploration(settings, str(tmp_path), stages=paper_stages(4)[:1], evaluator=synthetic_error, **kwargs)
    finished = open(first.report_path).read()
    plots = {p: p.stat().st_mtime_ns for p in (tmp_path / "plots").iterdir()}
    assert plots
    # an "interrupted" full run; results are keyed by how they were scored, so the replay names the evaluator too
    partial = run_exploration(settings, str(tmp_path), evaluate=False, evaluator=synthetic_error, **kwargs)
    assert [s.best for s in partial.stages] == [first.stages[0].best] == ["spindle"]
    assert partial.stopped_at.startswith("Parameter allocation (stage 2): 0 of")
    assert partial.evaluated == 0 and "## Not finished" in open(partial.report_path).read()
    # the finished exploration's report is kept (a replay with other options replaced it by an empty partial one)
    assert open(first.report_path).read() == finished and partial.report_path.endswith("report.partial.md")
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "plots").iterdir()} == plots  # its plots too
    assert [p.name for p in (tmp_path / "plots.partial").iterdir()] == ["stage1_grouping.png"]


def test_a_space_with_nothing_to_sample_scores_its_one_design_the_given_way(model, tmp_path, monkeypatch):
    import trainer_ext.explore_eval as explore_eval

    def no_training(*args, **kwargs):
        raise AssertionError("a real training run was started")

    monkeypatch.setattr(explore_eval, "train_and_score", no_training)
    space = small_space(groupings=["uniform"], group_strategies=[[["lora"]], [["adapter"]], [["lora"]], [["adapter"]]])
    settings = ExploreSettings(data_dir="unused", budget=BUDGET)
    options = {"space": space, "num_samples": 2, "model": model, "progress": False, "seed": 3}
    partial = run_exploration(settings, str(tmp_path / "a"), evaluate=False, **options)
    assert partial.stopped_at is not None and partial.best_design is None
    result = run_exploration(settings, str(tmp_path / "a"), evaluator=lambda d: 0.25, **options)
    assert result.stopped_at is None and result.best_error == 0.25 and result.evaluated == 1
    again = run_exploration(settings, str(tmp_path / "a"), evaluate=False, evaluator=lambda d: 0.25, **options)
    assert again.stopped_at is None and again.best_design == result.best_design and again.evaluated == 0


def test_exploration_sizes_budgets_on_a_weightless_model(tiny_backbone, tmp_path, monkeypatch):
    """The backbone was loaded with its weights only to size budgets, and kept for the whole run (+1.3 GB for a
    BERT-large shape; a review of scaling, 2026-11-25). It is built on the meta device now, with the same counts."""
    import transformers

    model_dir, data_dir = tiny_backbone

    def refuse(*args, **kwargs):
        raise AssertionError("weights loaded")

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", refuse)
    settings = ExploreSettings(data_dir=data_dir, model_name_or_path=model_dir, budget=290)  # met by both, ±2%
    space = small_space(groupings=["uniform"], group_strategies=[[["adapter"], ["lora"]]] * 4)
    kwargs = {"space": space, "num_samples": 2, "evaluator": lambda d: 0.5, "progress": False}
    meta = run_exploration(settings, str(tmp_path / "meta"), stages=[Stage("group_strategies", 0)], **kwargs)
    monkeypatch.undo()
    real = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    loaded = run_exploration(
        settings, str(tmp_path / "real"), stages=[Stage("group_strategies", 0)], model=real, **kwargs
    )
    assert meta.stages[0].candidates == loaded.stages[0].candidates and meta.best_design == loaded.best_design


def test_device_setting_reaches_the_trainer_and_keys_results_apart(tiny_backbone, tmp_path, monkeypatch):
    """Exploration trained on the CPU whatever the machine had (a review of scaling, 2026-11-25)."""
    import transformers

    model_dir, data_dir = tiny_backbone
    common = {"data_dir": data_dir, "model_name_or_path": model_dir, "budget": 300, "train_samples": 16}
    common |= {"validation_samples": 8, "max_steps": 1, "batch_size": 8, "max_length": 16}
    seen = []

    class Recording(transformers.TrainingArguments):
        def __init__(self, *args, **kwargs):
            seen.append(kwargs["use_cpu"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(transformers, "TrainingArguments", Recording)
    design = DesignSampler(make_model("bert", "SEQ_CLS", hidden=16, layers=4), 300).sample(DesignSpace(), 2, seed=0)[0]
    auto, cpu = ExploreSettings(**common, device="auto"), ExploreSettings(**common)
    result = evaluate_design(design, auto, str(tmp_path))
    assert seen == [False] and "device" not in result["settings"]  # "auto" resolved to this machine's CPU
    assert "device" not in cpu.fingerprint()  # keys of CPU results are those stored before the setting existed
    assert result_key(design, auto) == result_key(design, cpu)  # "auto" trained on this CPU-only machine's CPU
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with a GPU: keyed apart
    assert auto.fingerprint()["device"] == "cuda" and result_key(design, auto) != result_key(design, cpu)
    with pytest.raises(ValueError, match=r"`device` must be one of \['cpu', 'auto'\], got 'gpu'"):
        ExploreSettings(**common, device="gpu")
    with pytest.raises(SystemExit):
        explore_main(["--data_dir", data_dir, "--output_dir", str(tmp_path / "x"), "--device", "gpu", "-q"])


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("seed", "1", r"`seed` must be an int >= 0 \(and < 2\*\*32\), got '1'"),
        ("split_seed", -1, r"`split_seed` must be an int >= 0 \(and < 2\*\*32\), got -1"),
        ("seed", 1.0, r"`seed` must be an int >= 0 \(and < 2\*\*32\), got 1.0"),
        ("learning_rate", "1e-3", r"`learning_rate` must be > 0 \(a finite float\), got '1e-3'"),
        ("learning_rate", float("nan"), r"`learning_rate` must be > 0"),
        ("budget", True, r"`budget` must be > 0 \(a fraction < 1 or a count >= 1\), got True"),
        ("task", 3, r"`task` must be a non-empty string or None, got 3"),
        ("model_name_or_path", "", r"`model_name_or_path` must be a non-empty string or None, got ''"),
        ("data_dir", None, r"`data_dir` must be a non-empty string, got None"),
        ("config_kwargs", [("adapter_mode", "parallel")], r"`config_kwargs` must be a dict"),
        ("config_kwargs", {"budget": 10}, r"`config_kwargs` holds \['budget'\] \(set by each design\)"),
        ("config_kwargs", {"task_type": "CAUSAL_LM"}, r"holds \['task_type'\] \(set by each design\)"),
        (
            "config_kwargs",
            {"adapter_mod": "parallel"},
            r"holds \['adapter_mod'\] \(not settable here\).*'adapter_mode'",
        ),
        ("config_kwargs", {"plan": {}}, r"holds \['plan'\] \(not settable here\)"),
    ],
)
def test_settings_refuse_a_bad_field_naming_it(field, value, match):
    with pytest.raises(ValueError, match=match):
        ExploreSettings(**{"data_dir": "unused", field: value})


def test_settings_take_path_folders_as_strings_and_good_config_kwargs(tmp_path):
    settings = ExploreSettings(data_dir=tmp_path / "SST-2", model_name_or_path=tmp_path / "m",
                               config_kwargs={"adapter_mode": "parallel", "lora_rank": 4})  # fmt: skip
    assert settings.data_dir == str(tmp_path / "SST-2") and settings.model_name_or_path == str(tmp_path / "m")
    assert json.dumps(settings.fingerprint())  # part of every result's key


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("--budget", "inf", "--budget must be"),
        ("--budget", "1.5", "--budget must be"),
        ("--budget", "0", "--budget must be"),
        ("--space", "DIR", "is not a file"),
        ("--space", "LIST", "must hold a JSON object"),
        ("--space", "BROKEN", "is not valid JSON"),
        ("--tunable_groups", "0123", "1-based group digits"),
    ],
)
def test_bad_command_line_values_exit_2_naming_the_option(tmp_path, capsys, option, value, match):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.tsv").write_text("sentence\tlabel\n")
    files = {"DIR": tmp_path, "LIST": tmp_path / "list.json", "BROKEN": tmp_path / "broken.json"}
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "broken.json").write_text("{")
    value = str(files.get(value, value))
    argv = ["--data_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out"), option, value, "--quiet"]
    with pytest.raises(SystemExit) as exit_info:
        explore_main(argv)
    assert exit_info.value.code == 2
    assert match in capsys.readouterr().err


def test_explore_help_shows_defaults_and_takes_q(capsys):
    # as docs/cli.md says of every command: the help gives each option's default, and -q is --quiet
    with pytest.raises(SystemExit) as exit_info:
        explore_main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "(default: 8)" in help_text and "(default: 0.005)" in help_text
    assert "-q, --quiet" in help_text
    assert "(default: MiniLM-L6). (default" not in help_text


@pytest.mark.parametrize(
    ("output", "match"),
    [("FILE", "exists and is not a folder"), ("FILE/sub/out", "is a file, so")],
)
def test_output_dir_that_cannot_be_created_exits_2_before_anything_is_written(tmp_path, capsys, output, match):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.tsv").write_text("sentence\tlabel\n")
    (tmp_path / "file").write_text("not a folder")
    output = output.replace("FILE", str(tmp_path / "file"))
    with pytest.raises(SystemExit) as exit_info:
        explore_main(["--data_dir", str(tmp_path / "data"), "--output_dir", output, "--quiet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--output_dir" in err and match in err
    assert (tmp_path / "file").read_text() == "not a folder"


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("report-on-data", r"--report .*lies in .*an input of this run"),
        ("report-not-md", r"--report .* must be a Markdown file \(\.md\)"),
        ("report-users-own", r"--report .* exists and is not an exploration report"),
        ("output-cwd", r"--output_dir '\.' is the current directory"),
        ("output-users-folder", r"--output_dir .* is not empty and holds no earlier exploration"),
        ("output-in-data", r"--output_dir .* lies in .*an input of this run"),
        ("plots-in-data", r"--plots_dir .* lies in .*an input of this run"),
    ],
)
def test_explore_never_writes_over_the_users_files(tmp_path, capsys, monkeypatch, case, match):
    # `--report data/train.tsv` replaced the training data with the report; `--output_dir .` replaced the user's
    # own report.md (a bad-input fuzz, 2026-11-25)
    data, mine = tmp_path / "data", tmp_path / "mine"
    data.mkdir()
    mine.mkdir()
    (data / "train.tsv").write_text("sentence\tlabel\n")
    (mine / "report.md").write_text("my own notes")
    monkeypatch.chdir(mine if case == "output-cwd" else tmp_path)
    argv = ["--data_dir", str(data), "--output_dir", str(tmp_path / "out"), "--report_only", "--quiet"]
    extra = {
        "report-on-data": ["--report", str(data / "train.tsv")],
        "report-not-md": ["--report", str(tmp_path / "report.txt")],
        "report-users-own": ["--report", str(mine / "report.md")],
        "output-cwd": ["--output_dir", "."],
        "output-users-folder": ["--output_dir", str(mine)],
        "output-in-data": ["--output_dir", str(data / "out")],
        "plots-in-data": ["--plots_dir", str(data / "plots")],
    }[case]
    with pytest.raises(SystemExit) as exit_info:
        explore_main(argv + extra)
    assert exit_info.value.code == 2
    assert re.search(match, capsys.readouterr().err)
    assert (data / "train.tsv").read_text() == "sentence\tlabel\n" and sorted(os.listdir(data)) == ["train.tsv"]
    assert (mine / "report.md").read_text() == "my own notes" and os.listdir(mine) == ["report.md"]
    assert not (tmp_path / "out").exists()


def test_explore_resumes_in_its_own_folder_and_expands_the_home_folder(tmp_path, monkeypatch):
    from trainer_ext.explore_cli import check_model_and_output

    monkeypatch.setenv("HOME", str(tmp_path))
    args = argparse.Namespace(data_dir="~/data", model_name_or_path=None, output_dir="~/out", report=None,
                              plots_dir=None, space=None)  # fmt: skip
    (tmp_path / "data").mkdir()
    (tmp_path / "out" / "results").mkdir(parents=True)  # an earlier exploration (before the marker existed)
    (tmp_path / "out" / "report.md").write_text("# Design-space exploration report\n")
    check_model_and_output(args)
    assert args.output_dir == str(tmp_path / "out") and args.data_dir == str(tmp_path / "data")
    args.report = str(tmp_path / "out" / "report.md")  # its own report may be rewritten
    check_model_and_output(args)


def test_an_exploration_folder_is_not_replaced_by_another_command(tmp_path):
    # its own marker, not the pack's output marker: `train --overwrite` would have replaced the whole exploration
    from adapters_hub._files import check_output_dir
    from trainer_ext.explore_cli import EXPLORATION_MARKER

    (tmp_path / "ex").mkdir()

    (tmp_path / "ex" / EXPLORATION_MARKER).write_text("{}")
    (tmp_path / "ex" / "results").mkdir()
    with pytest.raises(FileExistsError, match="does not hold a previous output of peft-designspace"):
        check_output_dir(tmp_path / "ex", overwrite=True, only_pack_outputs=True)


def test_explore_expands_a_tilde_before_reading_the_data(tmp_path, monkeypatch, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.tsv").write_text("sentence\tlabel\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        explore_main(["--data_dir=~/data", "--output_dir=~/ex", "--model_name_or_path", "~/none", "-q"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--model_name_or_path" in err and "holds no train.tsv" not in err, err


def test_result_keys_agree_whether_the_task_is_given_or_inferred_from_the_folder(tmp_path):
    """The command line fills the task in from the folder name; the stored results of docs/exploration were keyed
    by `run_exploration` with `task=None`, so `--report_only` found none of them (a review, 2026-11-25)."""
    from common import ROOT

    from trainer_ext.explore_eval import ExploreSettings, result_key

    stored = next((ROOT / "docs" / "exploration" / "steps40" / "results").glob("*.json"))
    design = json.loads(stored.read_text())["design"]
    folder = str(tmp_path / "SST-2")
    inferred = result_key(design, ExploreSettings(data_dir=folder))
    assert result_key(design, ExploreSettings(data_dir=folder, task="SST-2")) == inferred
    assert result_key(design, ExploreSettings(data_dir=folder, task="sst2")) == inferred
    assert result_key(design, ExploreSettings(data_dir=folder, task="RTE")) != inferred  # another task is apart
    assert result_key(design, ExploreSettings(data_dir=str(tmp_path / "mine"), task="SST-2")) != inferred


def test_shipped_exploration_results_are_found_by_the_documented_command():
    """`docs/exploration/steps40` was made by `run_exploration` (task unset); its documented command fills the task."""
    from common import ROOT

    from trainer_ext.explore_eval import ExploreSettings, result_key

    results = sorted((ROOT / "docs" / "exploration" / "steps40" / "results").glob("*.json"))
    assert results
    stored = json.loads(results[0].read_text())
    settings = {k: v for k, v in stored["settings"].items() if k in ExploreSettings.__dataclass_fields__}
    settings["task"] = "SST-2"  # what the command line passes
    assert result_key(stored["design"], ExploreSettings(**settings)) == stored["key"]


@pytest.mark.parametrize("score", [math.nan, math.inf, -1.0, "bad", True])
def test_an_evaluator_score_that_is_not_an_error_is_refused_before_it_is_stored(model, tmp_path, score):
    """A NaN score was written to results/ before the stage's check failed, and reused by every later run."""
    settings = ExploreSettings(data_dir="unused", budget=BUDGET)
    design = DesignSampler(model, BUDGET).sample(small_space(), 2, seed=0)[0]
    with pytest.raises(ValueError, match=r"The evaluator returned .* it must return a finite error >= 0"):
        evaluate_design(design, settings, str(tmp_path), evaluator=lambda d: score)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("--num_samples", "1", "`num_samples` must be an int >= 2"),
        ("--max_steps", "0", "max_steps"),
        ("--workers", "0", "`workers` must be a positive int"),
    ],
)
def test_bad_counts_leave_no_output_folder(tiny_backbone, tmp_path, capsys, option, value, match):
    """`--num_samples 1` and `--max_steps 0` exited 2 but left the output folder with its marker behind (a docs
    review, 2026-11-25): every option is now checked before the folder is made."""
    model_dir, data_dir = tiny_backbone
    output = tmp_path / "out"
    argv = ["--data_dir", data_dir, "--model_name_or_path", model_dir, "--output_dir", str(output), option, value]
    with pytest.raises(SystemExit) as exit_info:
        explore_main([*argv, "--quiet"])
    assert exit_info.value.code == 2 and match in capsys.readouterr().err
    assert not output.exists()


def test_explore_fails_like_the_other_commands(tmp_path, capsys, monkeypatch):
    """A failed run printed a traceback and `explore` had neither `--debug` nor the exit-status help of the other
    commands (a docs review, 2026-11-25)."""
    import trainer_ext.explore_cli as explore_cli

    with pytest.raises(SystemExit):
        explore_main(["--help"])
    assert "exit status:\n  0    success" in capsys.readouterr().out

    def broken(args, checked):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(explore_cli, "check_explore_options", lambda args: None)
    monkeypatch.setattr(explore_cli, "_run_checked", broken)
    argv = ["--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "o"), "-q"]
    assert explore_main(argv) == 1
    assert capsys.readouterr().err.splitlines()[0] == "peft-designspace explore: error: RuntimeError: out of memory"
    with pytest.raises(RuntimeError, match="out of memory"):
        explore_main([*argv, "--debug"])


def test_a_budget_no_design_meets_exits_2_before_anything_is_written(tiny_backbone, tmp_path, capsys):
    """An infeasible `--budget` failed in the first stage, after the output folder was made, and (once a run's own
    ValueError exits 1) exited 1 where `train` and the examples exit 2 (a review of 2026-11-25)."""
    model_dir, data_dir = tiny_backbone
    output = tmp_path / "o"
    argv = ["--data_dir", data_dir, "--model_name_or_path", model_dir, "--output_dir", str(output), "-q"]
    with pytest.raises(SystemExit) as exit_info:
        explore_main([*argv, "--budget", "10"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "error: --budget 10: The budget" in err, err
    assert not output.exists()


def test_a_value_error_of_the_run_exits_1_not_2(tiny_backbone, tmp_path, capsys, monkeypatch):
    """A ValueError raised mid-run (e.g. no candidate of a later stage meets the budget) exited 2, the status of bad
    options checked before anything is written; the run had already written its folder and results."""
    import trainer_ext.explore as explore

    def no_candidate(*args, **kwargs):
        raise ValueError("no design of stage 'allocation' meets the budget")

    monkeypatch.setattr(explore, "run_exploration", no_candidate)
    model_dir, data_dir = tiny_backbone
    argv = ["--data_dir", data_dir, "--model_name_or_path", model_dir, "--output_dir", str(tmp_path / "o"), "-q"]
    assert explore_main([*argv, "--budget", "300"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("peft-designspace explore: error: ValueError: no design of stage 'allocation'"), err
