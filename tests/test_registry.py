"""Registration of the pack with PEFT (`_registry.py`): enum member, method registry, clashes, version gate."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from peft import LoraConfig, PeftConfig, get_peft_model
from peft.mapping import (
    PEFT_TYPE_TO_CONFIG_MAPPING,
    PEFT_TYPE_TO_MIXED_MODEL_MAPPING,
    PEFT_TYPE_TO_PREFIX_MAPPING,
    PEFT_TYPE_TO_TUNER_MAPPING,
)
from peft.utils import PeftType
from tiny_models import DEFAULT_TASK, MODEL_IDS, make_model

from peft_designspace import DesignSpaceConfig, DesignSpaceModel
from peft_designspace._registry import add_peft_type, check_peft_version, register_method
from peft_designspace.designspace.model import count_base_parameters

REPO = Path(__file__).resolve().parents[1]
MAPPINGS = (
    PEFT_TYPE_TO_CONFIG_MAPPING,
    PEFT_TYPE_TO_MIXED_MODEL_MAPPING,
    PEFT_TYPE_TO_PREFIX_MAPPING,
    PEFT_TYPE_TO_TUNER_MAPPING,
)


@pytest.fixture
def restore_registry():
    """Snapshot PEFT's registry tables and `PeftType`'s enum tables, and put them back after the test."""
    maps = [dict(mapping) for mapping in MAPPINGS]
    members, names = dict(PeftType._member_map_), list(PeftType._member_names_)
    values, attributes = dict(PeftType._value2member_map_), set(vars(PeftType))
    yield
    for mapping, saved in zip(MAPPINGS, maps):
        mapping.clear()
        mapping.update(saved)
    for added in set(vars(PeftType)) - attributes:
        type.__delattr__(PeftType, added)  # bypasses EnumType.__delattr__, which refuses to delete members
    PeftType._member_map_.clear()
    PeftType._member_map_.update(members)
    PeftType._member_names_[:] = names
    PeftType._value2member_map_.clear()
    PeftType._value2member_map_.update(values)


def _snapshot():
    return [dict(mapping) for mapping in MAPPINGS], list(PeftType)


class ZzdsConfig(PeftConfig):
    pass


class OtherZzdsConfig(PeftConfig):
    pass


class ZzdsModel:
    prefix = "zzdstest_"


# ------------------------------------------------------------------------------------------------ version gate


@pytest.mark.parametrize("version", ["0.21.2", "0.21.0", "0.21.99", "0.21.3.dev0", None])
def test_check_peft_version_accepts_the_supported_minor(version):
    check_peft_version(version)


@pytest.mark.parametrize("version", ["0.20.0", "0.22.0", "0.22.0rc1", "1.0.0", "0.9.0"])
def test_check_peft_version_rejects_others(version):
    with pytest.raises(ImportError, match=r"needs peft>=0\.21\.0,<0\.22\.0, found peft==") as info:
        check_peft_version(version)
    assert version in str(info.value) and "pip install" in str(info.value)


# ----------------------------------------------------------------------------------------------- enum member


def test_designspace_is_a_real_peft_type_member():
    member = PeftType.DESIGNSPACE
    assert PeftType("DESIGNSPACE") is member and PeftType["DESIGNSPACE"] is member
    assert isinstance(member, PeftType) and member.name == member.value == "DESIGNSPACE"
    assert member == "DESIGNSPACE" and {"DESIGNSPACE": 1}[member] == 1
    assert json.dumps(member) == '"DESIGNSPACE"'
    assert json.dumps({"peft_type": DesignSpaceConfig().peft_type}) == '{"peft_type": "DESIGNSPACE"}'
    assert member in list(PeftType) and "DESIGNSPACE" in PeftType.__members__
    assert PeftType.LORA in list(PeftType)  # the added member did not hide PEFT's own


def test_add_peft_type_is_idempotent():
    before = list(PeftType)
    assert add_peft_type("DESIGNSPACE") is PeftType.DESIGNSPACE
    assert add_peft_type("LORA") is PeftType.LORA
    assert list(PeftType) == before


def test_add_peft_type_adds_a_fresh_member_once(restore_registry):
    before = len(PeftType)
    member = add_peft_type("ZZDSTEST")
    assert add_peft_type("ZZDSTEST") is member
    assert len(PeftType) == before + 1 and list(PeftType)[-1] is member
    assert PeftType("ZZDSTEST") is member and PeftType.ZZDSTEST is member


@pytest.mark.parametrize("name", ["designspace", "DesignSpace", "DESIGN-SPACE", "DESIGN SPACE", "", "_", 3, None])
def test_add_peft_type_rejects_names_that_are_not_upper_case_identifiers(restore_registry, name):
    before = list(PeftType)
    with pytest.raises(ValueError, match=r"`name` must be an upper-case identifier"):
        add_peft_type(name)
    assert list(PeftType) == before


def test_add_peft_type_rejects_a_leading_digit(restore_registry):
    with pytest.raises(ValueError, match="identifier"):
        add_peft_type("1ABC")


def test_add_peft_type_refuses_a_value_clash(restore_registry):
    alias = str.__new__(PeftType, "ZZVALUE")  # a member whose value differs from its name
    alias._name_, alias._value_, alias.__objclass__ = "ZZALIAS", "ZZVALUE", PeftType
    alias._sort_order_ = len(PeftType._member_names_)
    PeftType._member_map_["ZZALIAS"] = alias
    PeftType._member_names_.append("ZZALIAS")
    PeftType._value2member_map_["ZZVALUE"] = alias
    with pytest.raises(ValueError, match=r"already has a member with the value 'ZZVALUE'"):
        add_peft_type("ZZVALUE")
    with pytest.raises(ValueError, match=r"member 'ZZALIAS' with the different value 'ZZVALUE'"):
        add_peft_type("ZZALIAS")
    assert "ZZVALUE" not in PeftType.__members__


# ------------------------------------------------------------------------------------------------- registration


def test_register_method_is_idempotent_for_the_same_classes(restore_registry):
    before = _snapshot()
    assert register_method("designspace", DesignSpaceConfig, DesignSpaceModel) is PeftType.DESIGNSPACE
    assert register_method("designspace", DesignSpaceConfig, DesignSpaceModel) is PeftType.DESIGNSPACE
    assert _snapshot() == before
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.DESIGNSPACE] is DesignSpaceConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.DESIGNSPACE] is DesignSpaceModel
    assert PEFT_TYPE_TO_PREFIX_MAPPING[PeftType.DESIGNSPACE] == DesignSpaceModel.prefix == "designspace_"


def test_register_a_fresh_method_then_refuse_other_classes_under_its_name(restore_registry):
    member = register_method("zzdstest", ZzdsConfig, ZzdsModel)
    assert member is PeftType.ZZDSTEST
    assert PEFT_TYPE_TO_CONFIG_MAPPING[member] is ZzdsConfig and PEFT_TYPE_TO_TUNER_MAPPING[member] is ZzdsModel
    assert PEFT_TYPE_TO_PREFIX_MAPPING[member] == "zzdstest_"
    assert register_method("zzdstest", ZzdsConfig, ZzdsModel) is member
    with pytest.raises(ValueError, match=r"'zzdstest' is already registered by .*test_registry; refusing"):
        register_method("zzdstest", OtherZzdsConfig, ZzdsModel)
    other_model = type("OtherZzdsModel", (), {"prefix": "zzdstest_"})
    with pytest.raises(ValueError, match="refusing to overwrite"):
        register_method("zzdstest", ZzdsConfig, other_model)
    assert PEFT_TYPE_TO_CONFIG_MAPPING[member] is ZzdsConfig and PEFT_TYPE_TO_TUNER_MAPPING[member] is ZzdsModel


def test_register_method_refuses_to_overwrite_a_peft_method(restore_registry):
    lora_model = type("MyLoraModel", (), {"prefix": "lora_"})
    with pytest.raises(ValueError, match=r"'lora' is already registered by peft\.tuners\.lora"):
        register_method("lora", ZzdsConfig, lora_model)
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.LORA] is LoraConfig


def test_register_method_requires_the_model_prefix_to_match(restore_registry):
    before = _snapshot()
    with pytest.raises(ValueError, match=r"`DesignSpaceModel\.prefix` must be 'zzdstest_', got 'designspace_'"):
        register_method("zzdstest", ZzdsConfig, DesignSpaceModel)
    assert _snapshot() == before


PREFIX_CLASHES = [
    ("designspace_extra", "designspace_"),  # an existing prefix is a prefix of the new one
    ("ln", "ln_tuning_"),  # the new prefix is a prefix of an existing one (PEFT's LN_TUNING)
    ("lora_plus", "lora_"),  # a LoRA variant named after LoRA
]


@pytest.mark.parametrize(("name", "other_prefix"), PREFIX_CLASHES)
def test_register_method_refuses_a_prefix_clash(restore_registry, name, other_prefix):
    model = type("ClashModel", (), {"prefix": f"{name}_"})
    with pytest.raises(ValueError, match=rf"prefix '{name}_' of '{name}' clashes with the prefix '{other_prefix}'"):
        register_method(name, ZzdsConfig, model)
    assert ZzdsConfig not in PEFT_TYPE_TO_CONFIG_MAPPING.values()
    assert list(PEFT_TYPE_TO_PREFIX_MAPPING.values()).count(f"{name}_") == 0


@pytest.mark.parametrize(("name", "other_prefix"), PREFIX_CLASHES[::2])
def test_a_refused_registration_leaves_no_enum_member(restore_registry, name, other_prefix):
    with pytest.raises(ValueError, match="clashes"):
        register_method(name, ZzdsConfig, type("ClashModel", (), {"prefix": f"{name}_"}))
    assert name.upper() not in PeftType.__members__


def test_register_method_refuses_classes_of_another_module_with_the_same_names(restore_registry):
    config = type("DesignSpaceConfig", (PeftConfig,), {"__module__": "another_plugin.config"})
    model = type("DesignSpaceModel", (), {"prefix": "designspace_", "__module__": "another_plugin.model"})
    with pytest.raises(ValueError, match="already registered"):
        register_method("designspace", config, model)


# ----------------------------------------------------------------------------- fresh interpreter (one process)

FORBIDDEN = ("transformers.trainer", "trainer_ext", "adapters_hub")
SCRIPT = """
import json, sys
from peft import PeftConfig
result = {"before": sorted(m for m in sys.modules if m.split(".")[0] in ("trainer_ext", "adapters_hub"))}
try:
    PeftConfig.from_pretrained(sys.argv[1])
    result["without"] = None
except Exception as error:
    result["without"] = [type(error).__name__, str(error)]
import peft_designspace
result["modules"] = sorted(m for m in sys.modules if m.startswith(("transformers.trainer", "trainer_ext",
                                                                    "adapters_hub", "peft_designspace")))
config = PeftConfig.from_pretrained(sys.argv[1])
result["with"] = [type(config).__module__, type(config).__name__, config.to_dict()]
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    saved = tmp_path_factory.mktemp("saved")
    config = DesignSpaceConfig(preset="lora", num_groups=3, budget=0.01, task_type="CAUSAL_LM")
    config.save_pretrained(saved)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(saved)], cwd=saved, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), config


def test_without_the_import_peft_cannot_load_the_config(fresh):
    result, _ = fresh
    assert result["without"] == ["KeyError", "'DESIGNSPACE'"]


def test_with_the_import_peft_loads_the_config(fresh):
    result, config = fresh
    module, name, data = result["with"]
    assert (module, name) == ("peft_designspace.designspace.config", "DesignSpaceConfig")
    assert data == json.loads(json.dumps(config.to_dict()))


def test_importing_the_pack_pulls_in_no_trainer_or_hub_layer(fresh):
    result, _ = fresh
    modules = result["modules"]
    assert "peft_designspace.designspace.model" in modules  # the listing sees the pack itself
    leaked = [m for m in modules if m.startswith(FORBIDDEN)]
    assert leaked == [], leaked


# ---------------------------------------------------------------------------------------------------- prefix


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_no_base_parameter_uses_the_prefix(model_id):
    base = make_model(model_id)
    count = sum(p.numel() for p in base.parameters())
    assert not [name for name, _ in base.named_parameters() if DesignSpaceModel.prefix in name]
    model = get_peft_model(base, DesignSpaceConfig(preset="lora", budget=0.05, task_type=DEFAULT_TASK[model_id]))
    assert any(DesignSpaceModel.prefix in name for name, _ in model.named_parameters())
    assert count_base_parameters(model) == count  # the prefix alone tells adapter parts from base weights
