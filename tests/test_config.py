"""`DesignSpaceConfig`: validation of every field, preset expansion, normalisation, round trips, documentation."""

import dataclasses
import json
import re

import pytest
from peft import PeftConfig, get_peft_model
from peft.utils import PeftType
from tiny_models import make_model

from peft_designspace import DesignSpaceConfig
from peft_designspace.designspace.presets import PRESETS

GS = [["lora"], ["lora"], ["lora"], ["lora"]]

# (id, kwargs, exception class the contract asks for, field, fragments the message must contain: value, allowed)
INVALID = [
    ("preset-unknown", {"preset": "s5"}, ValueError, "preset", ("'s5'", "'s4'")),
    ("preset-int", {"preset": 4}, TypeError, "preset", ("got 4", "'s4'")),
    ("budget-zero", {"budget": 0}, ValueError, "budget", ("got 0", "> 0")),
    ("budget-negative", {"budget": -0.1}, ValueError, "budget", ("-0.1", "> 0")),
    ("budget-nan", {"budget": float("nan")}, ValueError, "budget", ("nan", "> 0")),
    ("budget-bool", {"budget": True}, TypeError, "budget", ("True", "fraction")),
    ("budget-str", {"budget": "0.1"}, TypeError, "budget", ("'0.1'", "fraction")),
    ("budget-non-integer-count", {"budget": 2.5}, ValueError, "budget", ("2.5", "whole number")),
    ("num_groups-zero", {"preset": "lora", "num_groups": 0}, ValueError, "num_groups", ("got 0", "positive int")),
    ("num_groups-negative", {"preset": "lora", "num_groups": -1}, ValueError, "num_groups", ("-1", "positive int")),
    ("num_groups-bool", {"preset": "lora", "num_groups": True}, TypeError, "num_groups", ("True", "positive int")),
    ("num_groups-str", {"preset": "lora", "num_groups": "4"}, TypeError, "num_groups", ("'4'", "positive int")),
    ("num_groups-float", {"preset": "lora", "num_groups": 2.0}, TypeError, "num_groups", ("2.0", "positive int")),
    ("num_groups-str-s4", {"num_groups": "4"}, TypeError, "num_groups", ("'4'", "positive int")),
    ("grouping-unknown", {"grouping": "diamond"}, ValueError, "grouping", ("'diamond'", "'spindle'")),
    ("grouping-length", {"grouping": [4, 4, 4]}, ValueError, "grouping", ("3 sizes", "`num_groups` is 4")),
    ("grouping-zero-size", {"grouping": [0, 4, 4, 4]}, ValueError, "grouping", ("got 0", "positive int")),
    ("grouping-negative-size", {"grouping": [-1, 4, 4, 4]}, ValueError, "grouping", ("-1", "positive int")),
    ("grouping-float-size", {"grouping": [1.0, 2, 2, 1]}, TypeError, "grouping", ("1.0", "positive int")),
    ("grouping-bool-size", {"grouping": [True, 2, 2, 1]}, TypeError, "grouping", ("True", "positive int")),
    ("grouping-int", {"grouping": 3}, TypeError, "grouping", ("got 3", "pattern name")),
    ("grouping-dict", {"grouping": {"a": 1}}, TypeError, "grouping", ("{'a': 1}", "pattern name")),
    ("stack_grouping-unknown", {"stack_grouping": "both"}, ValueError, "stack_grouping", ("'both'", "'per_stack'")),
    ("stack_grouping-list", {"stack_grouping": ["joint"]}, TypeError, "stack_grouping", ("['joint']", "'joint'")),
    ("allocation-unknown", {"allocation": "random"}, ValueError, "allocation", ("'random'", "'increasing'")),
    ("allocation-list", {"allocation": ["uniform"]}, TypeError, "allocation", ("['uniform']", "'uniform'")),
    ("tunable_groups-empty", {"tunable_groups": []}, ValueError, "tunable_groups", ("got []", "non-empty")),
    ("tunable_groups-range", {"tunable_groups": [4]}, ValueError, "tunable_groups", ("[4]", "range(0, 4)")),
    ("tunable_groups-negative", {"tunable_groups": [-1]}, ValueError, "tunable_groups", ("[-1]", "range(0, 4)")),
    ("tunable_groups-duplicate", {"tunable_groups": [1, 1]}, ValueError, "tunable_groups", ("[1, 1]", "duplicates")),
    (
        "tunable_groups-str-index",
        {"tunable_groups": ["1"]},
        TypeError,
        "tunable_groups",
        ("['1']", "int group indices"),
    ),
    (
        "tunable_groups-bool-index",
        {"tunable_groups": [True]},
        TypeError,
        "tunable_groups",
        ("[True]", "int group indices"),
    ),
    ("tunable_groups-int", {"tunable_groups": 1}, TypeError, "tunable_groups", ("got 1", "list")),
    ("group_strategies-length", {"group_strategies": GS[:3]}, ValueError, "group_strategies", ("(4)", "[['lora']")),
    (
        "group_strategies-empty-group",
        {"group_strategies": [["lora"], [], ["lora"], ["lora"]]},
        ValueError,
        "group_strategies",
        ("got []", "'prefix'"),
    ),
    (
        "group_strategies-unknown",
        {"group_strategies": [["lora"], ["ia3"], ["lora"], ["lora"]]},
        ValueError,
        "group_strategies",
        ("'ia3'", "'adapter'"),
    ),
    (
        "group_strategies-duplicate",
        {"group_strategies": [["lora", "lora"], ["lora"], ["lora"], ["lora"]]},
        ValueError,
        "group_strategies",
        ("['lora', 'lora']", "twice"),
    ),
    (
        "group_strategies-str-groups",
        {"group_strategies": ["lora"] * 4},
        TypeError,
        "group_strategies",
        ("'lora'", "must be a list out of"),
    ),
    (
        "group_strategies-str",
        {"group_strategies": "lora"},
        TypeError,
        "group_strategies",
        ("'lora'", "lists of strategy names"),
    ),
    ("preset-none-without-strategies", {"preset": None}, ValueError, "group_strategies", ("preset=None", "per group")),
    ("s4-three-groups", {"num_groups": 3}, ValueError, "num_groups", ("is 3", "num_groups=4")),
    ("s4-five-groups", {"num_groups": 5}, ValueError, "num_groups", ("is 5", "num_groups=4")),
    *[
        (f"{name}-{label}", {name: value}, exc, name, (repr(value), "positive int"))
        for name in ("adapter_size", "prefix_length", "lora_rank")
        for label, value, exc in (
            ("zero", 0, ValueError),
            ("negative", -2, ValueError),
            ("bool", True, TypeError),
            ("float", 2.0, TypeError),
        )
    ],
    (
        "prefix_projection_hidden-zero",
        {"prefix_projection_hidden": 0},
        ValueError,
        "prefix_projection_hidden",
        ("got 0", "positive int"),
    ),
    (
        "prefix_projection_hidden-none",
        {"prefix_projection_hidden": None},
        TypeError,
        "prefix_projection_hidden",
        ("None", "positive int"),
    ),
    ("adapter_mode", {"adapter_mode": "serial"}, ValueError, "adapter_mode", ("'serial'", "'parallel'")),
    ("adapter_activation", {"adapter_activation": "swish"}, ValueError, "adapter_activation", ("'swish'", "'gelu'")),
    ("lora_dropout-one", {"lora_dropout": 1.0}, ValueError, "lora_dropout", ("1.0", "[0, 1)")),
    ("lora_dropout-negative", {"lora_dropout": -0.1}, ValueError, "lora_dropout", ("-0.1", "[0, 1)")),
    ("lora_dropout-str", {"lora_dropout": "0.1"}, TypeError, "lora_dropout", ("'0.1'", "[0, 1)")),
    ("lora_alpha-zero", {"lora_alpha": 0}, ValueError, "lora_alpha", ("got 0", "positive")),
    ("lora_alpha-negative", {"lora_alpha": -8}, ValueError, "lora_alpha", ("-8", "positive")),
    ("lora_alpha-str", {"lora_alpha": "8"}, TypeError, "lora_alpha", ("'8'", "positive")),
    ("lora_targets-empty", {"lora_targets": []}, ValueError, "lora_targets", ("got []", "'query'")),
    ("lora_targets-unknown", {"lora_targets": ["q_proj"]}, ValueError, "lora_targets", ("'q_proj'", "'query'")),
    ("lora_targets-int", {"lora_targets": 3}, TypeError, "lora_targets", ("got 3", "'query'")),
    ("bitfit_norms-str", {"bitfit_norms": "yes"}, TypeError, "bitfit_norms", ("'yes'", "None, True or False")),
    ("layer_stacks-str", {"layer_stacks": "model.layers"}, TypeError, "layer_stacks", ("'model.layers'", "list")),
    ("layer_stacks-ints", {"layer_stacks": [1]}, TypeError, "layer_stacks", ("[1]", "list of module paths")),
    ("target_modules-list", {"target_modules": ["q_proj"]}, ValueError, "target_modules", ("['q_proj']", "None")),
    ("target_modules-str", {"target_modules": "all-linear"}, ValueError, "target_modules", ("'all-linear'", "None")),
    ("target_modules-empty", {"target_modules": []}, ValueError, "target_modules", ("got []", "lora_targets")),
    ("schema_version-newer", {"schema_version": 2}, ValueError, "schema_version", ("2", "(1)")),
    ("schema_version-str", {"schema_version": "1"}, TypeError, "schema_version", ("'1'", "an int")),
    ("plan-list", {"plan": [1]}, TypeError, "plan", ("'list'", "leave it None")),
    ("plan-dict-without-layers", {"plan": {"a": 1}}, TypeError, "plan", ("'dict'", "plan dict")),
]

# Wrong types that are rejected, and name the field, but as ValueError instead of TypeError.
WRONG_CLASS: set[str] = set()  # all wrong types raise TypeError (fixed)


def _params(with_class_xfail):
    for row_id, kwargs, exc, field, fragments in INVALID:
        marks = ()
        if with_class_xfail and row_id in WRONG_CLASS:
            marks = pytest.mark.xfail(
                strict=True, raises=pytest.fail.Exception, reason="BUG: wrong type raises ValueError, not TypeError"
            )
        yield pytest.param(kwargs, exc, field, fragments, id=row_id, marks=marks)


def _check_message(message, field, fragments):
    assert f"`{field}" in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize(("kwargs", "exc", "field", "fragments"), list(_params(False)))
def test_invalid_value_is_rejected_with_a_message_naming_field_value_and_allowed(kwargs, exc, field, fragments):
    with pytest.raises((ValueError, TypeError), match=re.escape(f"`{field}")) as info:
        DesignSpaceConfig(**kwargs)
    _check_message(str(info.value), field, fragments)


@pytest.mark.parametrize(("kwargs", "exc", "field", "fragments"), list(_params(True)))
def test_invalid_value_raises_value_error_for_values_and_type_error_for_types(kwargs, exc, field, fragments):
    other = TypeError if exc is ValueError else ValueError
    try:
        DesignSpaceConfig(**kwargs)
    except other as error:
        pytest.fail(f"expected {exc.__name__}, got {type(error).__name__}: {error}")
    except exc:
        pass
    else:
        pytest.fail("no error raised")


NOT_REJECTED = [
    ("budget-inf", {"budget": float("inf")}, ValueError, "budget", "raises a bare OverflowError from int(inf)"),
    (
        "group_strategies-nested",
        {"group_strategies": [[["lora"]], ["lora"], ["lora"], ["lora"]]},
        TypeError,
        "group_strategies",
        "raises a bare `TypeError: unhashable type: 'list'` that names no field",
    ),
    ("lora_alpha-bool", {"lora_alpha": True}, TypeError, "lora_alpha", "accepted (bool passes the number check)"),
    ("lora_alpha-nan", {"lora_alpha": float("nan")}, ValueError, "lora_alpha", "accepted (nan <= 0 is False)"),
    ("bitfit_norms-int", {"bitfit_norms": 1}, TypeError, "bitfit_norms", "accepted (1 in (None, True, False))"),
    (
        "prefix_projection-str",
        {"prefix_projection": "no"},
        TypeError,
        "prefix_projection",
        "accepted: never validated, and the truthy string turns the projection on",
    ),
    (
        "init_weights-str",
        {"init_weights": "no"},
        TypeError,
        "init_weights",
        "accepted: never validated, and the truthy string keeps the identity initialisation",
    ),
    (
        "exclude_modules-set",
        {"exclude_modules": ["encoder.layer.0.attention.self.query"]},
        ValueError,
        "exclude_modules",
        "accepted, then silently ignored by the planner (PEFT only warns 'no modules were excluded')",
    ),
    (
        "target_parameters-set",
        {"target_parameters": ["encoder.layer.0.attention.self.query.weight"]},
        ValueError,
        "target_parameters",
        "accepted, then get_peft_model fails inside PEFT with an unrelated message",
    ),
    (
        "spindle-two-groups",
        {"preset": "lora", "num_groups": 2},
        ValueError,
        "grouping",
        "accepted (default grouping 'spindle' needs 3 groups); fails only later, when the plan is built",
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "exc", "field"),
    [pytest.param(kwargs, exc, field, id=row_id, marks=()) for row_id, kwargs, exc, field, reason in NOT_REJECTED],
)
def test_invalid_value_not_rejected_by_validation(kwargs, exc, field):
    with pytest.raises(exc, match=re.escape(f"`{field}")):
        DesignSpaceConfig(**kwargs)


# ------------------------------------------------------------------------------------------------ valid configs


def test_s4_preset_expands_to_the_paper_design_sorted():
    config = DesignSpaceConfig()
    assert config.peft_type is PeftType.DESIGNSPACE
    assert (config.preset, config.grouping, config.allocation, config.num_groups) == ("s4", "spindle", "uniform", 4)
    assert config.group_strategies == [
        ["adapter", "lora"],
        ["adapter", "prefix"],
        ["adapter", "bitfit", "prefix"],
        ["bitfit", "lora", "prefix"],
    ]
    assert config.tuned_groups == [0, 1, 2, 3]


@pytest.mark.parametrize("preset", ["adapter", "prefix", "bitfit", "lora"])
@pytest.mark.parametrize("num_groups", [1, 3, 4, 6])
def test_single_strategy_presets_replicate_to_num_groups(preset, num_groups):
    config = DesignSpaceConfig(preset=preset, num_groups=num_groups)
    assert config.group_strategies == [[preset]] * num_groups
    assert (config.grouping, config.allocation) == ("spindle", "uniform")
    config.group_strategies[0].append("x")  # the groups are separate lists, not aliases of each other or of PRESETS
    assert config.group_strategies[1:] == [[preset]] * (num_groups - 1)
    assert PRESETS[preset]["group_strategies"] == [[preset]] * 4
    assert DesignSpaceConfig(preset=preset, num_groups=num_groups).group_strategies[0] == [preset]


def test_explicit_settings_override_the_preset():
    strategies = [["prefix", "lora"], ["adapter"], ["bitfit"], ["lora", "bitfit"]]
    config = DesignSpaceConfig(preset="s4", group_strategies=strategies, grouping="uniform", allocation="increasing")
    assert config.group_strategies == [["lora", "prefix"], ["adapter"], ["bitfit"], ["bitfit", "lora"]]
    assert (config.grouping, config.allocation) == ("uniform", "increasing")
    three = DesignSpaceConfig(preset="s4", num_groups=3, group_strategies=[["lora"], ["adapter"], ["prefix"]])
    assert three.num_groups == 3 and three.group_strategies == [["lora"], ["adapter"], ["prefix"]]
    bare = DesignSpaceConfig(preset=None, group_strategies=GS)
    assert (bare.grouping, bare.allocation, bare.group_strategies) == ("spindle", "uniform", GS)


def test_normalisation_of_valid_values():
    config = DesignSpaceConfig(
        tunable_groups=(3, 0), lora_targets="key", grouping=(1, 2, 2, 1), budget=1000.0, lora_dropout=0.5
    )
    assert config.tunable_groups == [0, 3] and config.tuned_groups == [0, 3]
    assert config.lora_targets == ["key"]
    assert config.grouping == [1, 2, 2, 1] and isinstance(config.grouping, list)
    assert DesignSpaceConfig(lora_targets=["value", "query", "value"]).lora_targets == ["query", "value"]
    assert DesignSpaceConfig().lora_targets is not DesignSpaceConfig().lora_targets
    for budget in (1, 0.999, 10**9):
        assert DesignSpaceConfig(budget=budget).budget == budget
    valid = [{"lora_rank": 1}, {"lora_alpha": 0.5}, {"bitfit_norms": False}, {"layer_stacks": ["model.layers"]}]
    valid += [{"plan": {"layers": []}}, {"prefix_projection_hidden": 1}, {"tunable_groups": [3]}]
    for kwargs in valid:
        config = DesignSpaceConfig(**kwargs)
        assert all(getattr(config, key) == value for key, value in kwargs.items())


ROUND_TRIP = [
    {},
    {"preset": "lora", "num_groups": 6, "grouping": "uniform", "lora_rank": 4, "lora_alpha": 8.0},
    {"preset": None, "group_strategies": GS, "grouping": [1, 1, 3, 3], "tunable_groups": [2, 3]},
    {"preset": "prefix", "stack_grouping": "per_stack", "prefix_projection": True, "task_type": "SEQ_2_SEQ_LM"},
    {"adapter_mode": "parallel", "adapter_activation": "gelu", "bitfit_norms": True, "modules_to_save": ["score"]},
]


@pytest.mark.parametrize("kwargs", ROUND_TRIP)
def test_to_dict_round_trip(kwargs):
    config = DesignSpaceConfig(**kwargs)
    data = config.to_dict()
    assert data["peft_type"] == "DESIGNSPACE" and data["schema_version"] == 1
    assert json.loads(json.dumps(data)) == data
    again = DesignSpaceConfig(**data)
    assert again == config and again.to_dict() == data


@pytest.mark.parametrize("kwargs", ROUND_TRIP)
def test_save_and_reload_through_peft(tmp_path, kwargs):
    config = DesignSpaceConfig(**kwargs)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "DESIGNSPACE" and saved["preset"] == config.preset
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert type(loaded) is DesignSpaceConfig and loaded.peft_type is PeftType.DESIGNSPACE
    assert loaded == config
    assert DesignSpaceConfig.from_pretrained(tmp_path) == config


def test_saved_plan_reloads_unchanged(tmp_path):
    model = get_peft_model(make_model("bert"), DesignSpaceConfig(budget=0.05, task_type="SEQ_CLS"))
    config = model.peft_config["default"]
    assert config.plan is not None and config.plan["layers"]
    config.save_pretrained(tmp_path)
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert loaded.plan == config.plan and loaded == config


def test_newer_schema_in_a_saved_config_is_refused(tmp_path):
    DesignSpaceConfig().save_pretrained(tmp_path)
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "schema_version": 2}))
    with pytest.raises(ValueError, match=r"`schema_version` 2 is newer"):
        PeftConfig.from_pretrained(tmp_path)


OWN_FIELDS = sorted(
    {f.name for f in dataclasses.fields(DesignSpaceConfig)} - {f.name for f in dataclasses.fields(PeftConfig)}
)
UNDOCUMENTED: set[str] = set()  # every field is documented (fixed)


def test_own_fields_are_the_expected_ones():
    assert {"preset", "budget", "lora_targets", "plan", "schema_version"} <= set(OWN_FIELDS)
    assert not {"task_type", "peft_type", "inference_mode"} & set(OWN_FIELDS)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            name,
            marks=pytest.mark.xfail(strict=True, reason="BUG: field missing from the class docstring's Args")
            if name in UNDOCUMENTED
            else (),
        )
        for name in OWN_FIELDS
    ],
)
def test_every_field_is_documented_in_the_class_docstring(name):
    assert re.search(rf"^ {{8}}{name} \(`", DesignSpaceConfig.__doc__, flags=re.MULTILINE), name
