"""Input validation fixes: non-finite S3PET settings and search states, `random_structure`'s budget, numpy budgets,
`layer_stacks` given as a string, and the docstring examples (run as doctests)."""

import doctest
import json
import math
import re

import numpy as np
import pytest
import torch
from peft import get_peft_model
from tiny_models import make_model

import peft_designspace
from peft_designspace import DesignSpaceConfig, S3PETConfig, SAMTuningConfig, _config
from peft_designspace._config import check_budget
from peft_designspace.architecture import resolve_architecture
from peft_designspace.designspace.model import count_base_parameters
from peft_designspace.s3pet.structure import FORMAT, build_structure, load_structure, save_structure

INF, NAN = float("inf"), float("nan")


def _search_model(budget: float = 500, layers: int = 2, **config):
    """A search-mode S3PET model on a tiny BERT (2 layers: 36 candidates, 1,996 parameters, base 24,482)."""
    base = make_model("bert", "SEQ_CLS", layers=layers)
    return get_peft_model(base, S3PETConfig(budget=budget, task_type="SEQ_CLS", **config))


def _paths_of(model, alpha_index: int) -> str:
    """The module path of the `alpha_index`-th wrapped module (the order of `architecture_parameters()`)."""
    return list(dict.fromkeys(c.path for c in model.base_model.candidates()))[alpha_index]


# 1. non-finite S3PET settings and search states -------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value",
    [("beta", INF), ("beta", NAN), ("beta", -INF), ("lora_alpha", INF), ("lora_alpha", NAN), ("lora_alpha", -INF)],
    ids=["beta-inf", "beta-nan", "beta-neg-inf", "lora_alpha-inf", "lora_alpha-nan", "lora_alpha-neg-inf"],
)
def test_s3pet_config_refuses_non_finite_floats(field, value):
    with pytest.raises(ValueError) as info:
        S3PETConfig(budget=500, **{field: value})
    message = str(info.value)
    assert f"`{field}`" in message and repr(value) in message and "finite" in message


@pytest.mark.parametrize("field", ["beta", "lora_alpha"])
@pytest.mark.parametrize("value", [True, "1.0", None])
def test_s3pet_config_float_settings_keep_type_errors(field, value):
    with pytest.raises(TypeError, match=f"`{field}`"):
        S3PETConfig(budget=500, **{field: value})


def test_s3pet_config_still_takes_finite_numbers():
    config = S3PETConfig(budget=500, beta=np.float64(0.5), lora_alpha=8)
    assert config.beta == 0.5 and config.lora_alpha == 8


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_derive_structure_refuses_non_finite_alpha_and_names_the_module(bad):
    model = _search_model()
    with torch.no_grad():
        model.base_model.architecture_parameters()[3].fill_(bad)
    path = _paths_of(model, 3)
    for call in (model.base_model.derive_structure, model.base_model.keep_probabilities):
        with pytest.raises(ValueError) as info:
            call()
        assert path in str(info.value) and "diverged" in str(info.value)


def test_derive_structure_refuses_non_finite_alpha_given_as_argument():
    model = _search_model()
    alpha = [a.detach().clone() for a in model.base_model.architecture_parameters()]
    alpha[0][0] = NAN
    with pytest.raises(ValueError, match=re.escape(_paths_of(model, 0))):
        model.base_model.derive_structure(alpha=alpha)


def test_forward_refuses_non_finite_alpha():
    model = _search_model()
    with torch.no_grad():
        model.base_model.architecture_parameters()[1].fill_(NAN)
    with pytest.raises(ValueError, match="diverged"):
        model(input_ids=torch.randint(0, 100, (1, 5)))


def test_beta_made_non_finite_after_construction_is_refused():
    model = _search_model()
    model.peft_config["default"].beta = INF
    with pytest.raises(ValueError, match="beta"):
        model.base_model.derive_structure()


def test_build_structure_refuses_non_finite_p_and_names_the_modules():
    model = _search_model()
    candidates = model.base_model.candidates()
    p = [0.5] * len(candidates)
    p[2], p[7] = NAN, INF
    with pytest.raises(ValueError) as info:
        build_structure(candidates, p, 500, 24482, "greedy", "m")
    message = str(info.value)
    assert candidates[2].path in message and candidates[7].path in message and "diverged" in message


def test_build_structure_takes_torch_keep_probabilities():
    # torch scalars are not `numbers.Real`: the finiteness check called finite tensors a diverged search
    model = _search_model()
    candidates = model.base_model.candidates()
    p, _, _ = model.base_model.keep_probabilities()
    for given in (p.detach(), list(p.detach())):
        structure = build_structure(candidates, given, 500, 24482, "greedy", "m")
        assert 0 < structure["total"] <= 500


def test_save_structure_never_writes_nan(tmp_path):
    structure = {
        "format": FORMAT,
        "version": 1,
        "modules": [{"path": "a.b", "type": "bitfit", "size": 32, "p": NAN}],
    }
    with pytest.raises(ValueError, match="a.b"):
        save_structure(structure, tmp_path / "s.json")
    assert not (tmp_path / "s.json").exists()


def test_saved_structure_is_strict_json(tmp_path):
    structure = _search_model().base_model.derive_structure()
    path = save_structure(structure, tmp_path / "s.json")

    def refuse(constant: str) -> None:
        raise ValueError(constant)

    assert json.loads(path.read_text(), parse_constant=refuse) == structure


@pytest.mark.parametrize("p", [NAN, INF, "0.5", True])
def test_load_structure_refuses_a_bad_p(p):
    structure = {"format": FORMAT, "version": 1, "modules": [{"path": "a.b", "type": "bitfit", "size": 32, "p": p}]}
    with pytest.raises(ValueError, match=r"a\.b.*`p`"):
        load_structure(structure)


# 2. random_structure's budget -------------------------------------------------------------------------------------
def test_random_structure_budget_fraction_resolves_like_the_search():
    model = _search_model()
    expected = _search_model(budget=0.02).base_model.search_budget()
    assert expected == int(0.02 * count_base_parameters(make_model("bert", "SEQ_CLS", layers=2)))
    structure = model.base_model.random_structure(budget=0.02)
    assert structure["budget"] == expected and structure["total"] <= expected


@pytest.mark.parametrize("budget", [1000, 1000.0, np.int64(1000), np.float64(1000.0)])
def test_random_structure_budget_count(budget):
    structure = _search_model().base_model.random_structure(budget=budget)
    assert structure["budget"] == 1000 and type(structure["budget"]) is int


@pytest.mark.parametrize(
    "budget, exc, fragments",
    [
        (1500.7, ValueError, ("1500.7", "whole number")),
        ("x", TypeError, ("'x'", "fraction")),
        (True, TypeError, ("True", "fraction")),
        (0, ValueError, ("got 0", "> 0")),
        (NAN, ValueError, ("nan", "> 0")),
        (10**7, ValueError, ("10,000,000", "whole search space")),
        (1996, ValueError, ("1,996", "whole search space")),
        (20, ValueError, ("20", "smallest candidate")),
        (0.0005, ValueError, ("0.0005", "smallest candidate")),
    ],
    ids=["non-whole", "str", "bool", "zero", "nan", "huge", "whole-space", "too-small", "tiny-fraction"],
)
def test_random_structure_refuses_a_bad_budget(budget, exc, fragments):
    model = _search_model()
    with pytest.raises(exc) as info:
        model.base_model.random_structure(budget=budget)
    assert "budget" in str(info.value)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_random_structure_default_budget_unchanged():
    model = _search_model(budget=500)
    assert model.base_model.random_structure(seed=3)["budget"] == 500


# 3. numpy budgets ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "budget, expected",
    [(np.int64(500), 500), (np.int32(7), 7), (np.float64(500.0), 500), (np.float32(0.25), 0.25), (500, 500)],
)
def test_check_budget_takes_numpy_numbers(budget, expected):
    resolved = check_budget(budget, "the base model")
    assert resolved == expected
    assert type(resolved) is (int if expected >= 1 else float)


@pytest.mark.parametrize(
    "budget, exc, fragments",
    [
        (np.int64(0), ValueError, ("got np.int64(0)", "> 0")),
        (np.int64(-3), ValueError, ("-3", "> 0")),
        (np.float64(2.5), ValueError, ("2.5", "whole number")),
        (np.float64(NAN), ValueError, ("nan", "> 0")),
        (np.float32(INF), ValueError, ("inf", "> 0")),
        (np.bool_(True), TypeError, ("True", "fraction")),
        (True, TypeError, ("True", "fraction")),
        (1 + 0j, TypeError, ("(1+0j)", "fraction")),
    ],
)
def test_check_budget_refuses_bad_numbers(budget, exc, fragments):
    with pytest.raises(exc) as info:
        check_budget(budget, "the base model")
    assert "`budget`" in str(info.value)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_configs_take_numpy_integer_budgets(tmp_path):
    configs = [
        S3PETConfig(budget=np.int64(500)),
        SAMTuningConfig(budget=np.int64(100)),
        DesignSpaceConfig(budget=np.int64(3000)),
    ]
    for index, config in enumerate(configs):
        assert type(config.budget) is int
        config.save_pretrained(tmp_path / str(index))  # JSON-able: a numpy int64 was not


# 4. layer_stacks ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stacks", ["bert.encoder.layer", [1], ["a", None], {"bert.encoder.layer"}, 3])
def test_s3pet_config_refuses_bad_layer_stacks(stacks):
    with pytest.raises(TypeError) as info:
        S3PETConfig(budget=500, layer_stacks=stacks)
    message = str(info.value)
    assert "`layer_stacks`" in message and repr(stacks) in message and "list of module paths" in message


@pytest.mark.parametrize("stacks", [None, ["bert.encoder.layer"], ("bert.encoder.layer",)])
def test_s3pet_config_takes_good_layer_stacks(stacks):
    model = _search_model(layer_stacks=stacks)
    assert len(model.base_model.candidates()) == 36


STRING_STACKS = r"`layer_stacks` must be a list of module paths or None, got 'bert.encoder.layer'"


def test_check_layer_stacks_and_resolve_architecture_refuse_a_string():
    with pytest.raises(TypeError, match=STRING_STACKS):
        _config.check_layer_stacks("bert.encoder.layer")
    with pytest.raises(TypeError, match=STRING_STACKS):
        resolve_architecture(make_model("bert", "SEQ_CLS", layers=2), "bert.encoder.layer")
    _config.check_layer_stacks(None)
    _config.check_layer_stacks(["a", "b"])


# 5. docstring examples ----------------------------------------------------------------------------------------------
def _examples(obj: object) -> list[str]:
    """The bodies of the ```py blocks of `obj`'s docstring."""
    return re.findall(r"```py\n(.*?)\n\s*```", obj.__doc__ or "", flags=re.S)


def _run_examples(obj: object, globs: dict) -> None:
    blocks = _examples(obj)
    assert blocks, f"no example in {obj!r}"
    parser, runner = doctest.DocTestParser(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for i, block in enumerate(blocks):
        report: list[str] = []
        result = runner.run(parser.get_doctest(block, dict(globs), f"{obj!r}[{i}]", None, 0), out=report.append)
        assert result.failed == 0, "".join(report)


def _docstring_targets() -> list:
    from adapters_hub import _repo_ids
    from peft_designspace import _io, _layers
    from peft_designspace.designspace import config, model, refine, space
    from peft_designspace.s3pet import model as s3pet_model
    from peft_designspace.s3pet import plot
    from peft_designspace.samtuning import config as sam_config

    return [
        pytest.param(_io.atomic_path, vars(_io), id="io-atomic-path"),
        pytest.param(_repo_ids.is_hub_id, {}, id="repo-ids-is-hub-id"),
        pytest.param(_repo_ids.is_hub_dataset, {}, id="repo-ids-is-hub-dataset"),
        pytest.param(_layers.added, vars(_layers), id="layers-added"),
        pytest.param(_layers.check_finite_deltas, vars(_layers), id="layers-check-finite-deltas"),
        pytest.param(_layers.keeping_requires_grad, vars(_layers), id="layers-keeping-requires-grad"),
        pytest.param(config.DesignSpaceConfig, {}, id="designspace-config"),
        pytest.param(model.DesignSpaceModel, {}, id="designspace-model"),
        pytest.param(refine, vars(refine), id="designspace-refine"),
        pytest.param(space, vars(space), id="designspace-space"),
        pytest.param(sam_config.SAMTuningConfig, {}, id="samtuning-config"),
        pytest.param(s3pet_model.S3PETModel.random_structure, {}, id="s3pet-random-structure"),
        pytest.param(plot.plot_trajectory, vars(plot), id="s3pet-plot-trajectory"),
    ]


@pytest.mark.parametrize("obj, globs", _docstring_targets())
def test_docstring_examples_run(obj, globs, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    _run_examples(obj, {**globs, "peft_designspace": peft_designspace, "math": math})


# S4 and all configs: an unknown architecture's roles, modules_to_save ------------------------------------------------
@pytest.mark.filterwarnings("ignore:The realised count:peft_designspace.DesignSpaceWarning")  # BitFit's fixed size
def test_s4_on_layers_without_known_roles_says_only_bitfit_fits(monkeypatch):
    import transformers

    from peft_designspace import architecture

    # DistilBERT's names (`q_lin`, `ffn.lin1`, ...) are known now: hide every name but BERT's, as for a new family
    bert_only = {
        role: tuple(p for p in patterns if "lin" not in p) for role, patterns in architecture.ROLE_PATTERNS.items()
    }
    monkeypatch.setattr(architecture, "ROLE_PATTERNS", bert_only)
    config = transformers.DistilBertConfig(vocab_size=64, dim=32, n_layers=4, n_heads=4, hidden_dim=64)
    base = transformers.DistilBertForSequenceClassification(config)
    with pytest.raises(
        ValueError, match=r"No module.*has a known role.*only BitFit.*`layer_stacks` cannot help"
    ) as info:
        get_peft_model(base, DesignSpaceConfig(preset="lora", budget=0.05, task_type="SEQ_CLS"))
    assert "distilbert.transformer.layer.0" in str(info.value)
    bitfit = get_peft_model(
        transformers.DistilBertForSequenceClassification(config),
        DesignSpaceConfig(preset="bitfit", budget=0.05, task_type="SEQ_CLS"),
    )
    assert any("designspace_bias" in n for n, _ in bitfit.named_parameters())


@pytest.mark.parametrize("config_cls", [DesignSpaceConfig, SAMTuningConfig, S3PETConfig])
def test_modules_to_save_must_be_a_list_of_names(config_cls):
    # a lone string reached PEFT, which failed with "'str' object has no attribute 'extend'"
    with pytest.raises(TypeError, match=r"`modules_to_save` must be None or a list of module names.*got 'pooler'"):
        config_cls(task_type="SEQ_CLS", modules_to_save="pooler")
    assert config_cls(task_type="SEQ_CLS", modules_to_save=["pooler"]).modules_to_save == ["pooler"]
