"""S4 design space: faults found in a review of the design-space code (2026-11-25), each checked here."""

import pytest
import torch
from peft import get_peft_model

import peft_designspace  # noqa: F401  (registers the method)
from peft_designspace import DesignSpaceConfig
from peft_designspace.designspace.budget import InfeasibleBudgetError
from peft_designspace.designspace.grouping import group_sizes
from peft_designspace.designspace.refine import Stage
from peft_designspace.designspace.space import DesignSampler, DesignSpace
from tests.tiny_models import make_model
from trainer_ext.explore import ExploreSettings, evaluate_designs, run_exploration

BUDGET = 0.05


def lora_space(**overrides) -> DesignSpace:
    data = {
        "groupings": ["spindle", "uniform"],
        "allocations": ["uniform"],
        "tunable_groups": [[0, 1, 2, 3]],
        "group_strategies": [[["lora"]]] * 4,
    }
    return DesignSpace.from_dict({**data, **overrides})


# the sampler reports planning errors as they are, not as an unmet budget ------------------------------------------


def test_sampler_passes_on_group_sizes_that_do_not_fit_the_model():
    sampler = DesignSampler(make_model("bert", "SEQ_CLS", hidden=32, layers=8), BUDGET)
    with pytest.raises(ValueError, match=r"sum to 4, but the stack has 8 layers") as info:
        sampler.sample(lora_space(groupings=[[1, 1, 1, 1]]), 2, seed=0)
    assert not isinstance(info.value, InfeasibleBudgetError)


def test_sampler_passes_on_a_model_with_fewer_layers_than_groups():
    sampler = DesignSampler(make_model("bert", "SEQ_CLS", hidden=32, layers=3), BUDGET)
    with pytest.raises(ValueError, match=r"Cannot cut 3 layers into 4 non-empty groups") as info:
        sampler.sample(lora_space(groupings=["uniform"]), 2, seed=0)
    assert not isinstance(info.value, InfeasibleBudgetError)


def test_an_unmet_budget_is_still_an_infeasible_budget_error():
    sampler = DesignSampler(make_model("bert", "SEQ_CLS", hidden=32, layers=8), 10)  # 10 parameters: nothing fits
    with pytest.raises(InfeasibleBudgetError, match=r"every plan was infeasible"):
        sampler.sample(lora_space(), 2, seed=0)


def test_exploration_does_not_drop_a_candidate_for_a_planning_error(tmp_path):
    model = make_model("bert", "SEQ_CLS", hidden=32, layers=8)
    space = lora_space(groupings=[[1, 1, 1, 1], [2, 2, 2, 2]])
    with pytest.raises(ValueError, match=r"sum to 4, but the stack has 8 layers"):
        run_exploration(
            ExploreSettings(data_dir="unused", budget=BUDGET),
            str(tmp_path),
            space=space,
            num_samples=2,
            evaluator=lambda design: 0.1,
            model=model,
            progress=False,
            stages=[Stage("grouping")],
        )


# scores from a custom evaluator are never reused as training results -----------------------------------------------


def test_evaluator_scores_are_not_reused_by_a_run_that_trains(tmp_path, monkeypatch):
    import trainer_ext.explore_eval as explore_eval

    trained = []
    monkeypatch.setattr(
        explore_eval, "train_and_score", lambda design, settings: trained.append(design) or {"error": 0.5}
    )
    settings = ExploreSettings(data_dir="unused", budget=BUDGET)
    designs = DesignSampler(make_model("bert", "SEQ_CLS", hidden=32, layers=8), BUDGET).sample(lora_space(), 2, seed=0)
    results_dir = str(tmp_path / "results")

    proxy = evaluate_designs(designs, settings, results_dir, evaluator=lambda design: 0.123, progress=False)
    assert {r["error"] for r in proxy.values()} == {0.123}
    assert {r["scored_by"] for r in proxy.values()} == {"evaluator"}

    real = evaluate_designs(designs, settings, results_dir, progress=False)
    assert len(trained) == len(real) == len(proxy)
    assert {r["error"] for r in real.values()} == {0.5}
    assert not any(r["cached"] for r in real.values())

    # each kind is reused by a run of the same kind, and nothing stored was overwritten
    again = evaluate_designs(designs, settings, results_dir, evaluator=lambda design: 0.9, progress=False)
    assert {r["error"] for r in again.values()} == {0.123} and all(r["cached"] for r in again.values())
    assert len(list((tmp_path / "results").glob("*.json"))) == 2 * len(proxy)


# increasing and decreasing groupings are strict wherever a strict shape exists ------------------------------------


@pytest.mark.parametrize("num_groups", [2, 3, 4, 5])
def test_monotone_groupings_are_strict_where_possible(num_groups):
    for num_layers in range(num_groups, 61):
        for pattern in ("increasing", "decreasing"):
            sizes = group_sizes(num_layers, num_groups, pattern)
            assert sum(sizes) == num_layers and min(sizes) >= 1
            ordered = sizes if pattern == "increasing" else sizes[::-1]
            if num_layers >= num_groups * (num_groups + 1) // 2:
                assert all(a < b for a, b in zip(ordered, ordered[1:])), (num_layers, pattern, sizes)
            else:
                assert ordered == sorted(ordered), (num_layers, pattern, sizes)


def test_monotone_groupings_keep_the_documented_examples():
    assert group_sizes(10, 4, "increasing") == [1, 2, 3, 4]
    assert group_sizes(10, 4, "decreasing") == [4, 3, 2, 1]
    assert group_sizes(12, 4, "increasing") == [1, 2, 3, 6]
    assert group_sizes(24, 4, "decreasing") == [12, 6, 4, 2]


# prefixed layers follow set_attn_implementation after injection ----------------------------------------------------


def test_prefixed_layers_follow_a_later_switch_of_attention_implementation():
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    config = DesignSpaceConfig(preset="prefix", budget=BUDGET, task_type="CAUSAL_LM", init_weights=False)

    eager_first = make_model("llama")
    eager_first.set_attn_implementation("eager")
    reference = get_peft_model(eager_first, config)
    switched = get_peft_model(make_model("llama"), config)
    switched.load_state_dict(reference.state_dict())
    switched.base_model.model.set_attn_implementation("eager")

    with torch.no_grad():
        want = reference(input_ids=ids, output_attentions=True)
        got = switched(input_ids=ids, output_attentions=True)
    layers = reference.base_model.model.config.num_hidden_layers
    assert len(want.attentions) == len(got.attentions) == layers  # eager returns the weights; sdpa returns none
    torch.testing.assert_close(got.logits, want.logits)


def test_switching_prefixed_layers_to_an_unsupported_implementation_is_a_clear_error():
    model = get_peft_model(
        make_model("llama"), DesignSpaceConfig(preset="prefix", budget=BUDGET, task_type="CAUSAL_LM")
    )
    model.base_model.model.config._attn_implementation_internal = "flex_attention"  # as set_attn_implementation does
    with pytest.raises(ValueError, match=r"supports attn_implementation in \['eager', 'sdpa'\].*'flex_attention'"):
        model(input_ids=torch.tensor([[5, 6, 7]]))


# the sampler's budget target on a 4-bit backbone is the one get_peft_model uses --------------------------------------


def test_sampler_counts_a_4bit_backbone_as_get_peft_model_does(tmp_path):
    from tests.test_trainer_quantized import _quantized

    quantized = _quantized(tmp_path, "llama", "CAUSAL_LM", 4, 128)
    full = make_model("llama", "CAUSAL_LM", hidden=128)
    target = DesignSampler(quantized, 0.01).target
    assert target == DesignSampler(full, 0.01).target
    report = get_peft_model(quantized, DesignSpaceConfig(preset="lora", budget=0.01, task_type="CAUSAL_LM"))
    assert target == report.base_model.budget_report().target


# adapter sites: methods.md's Pfeiffer-style single site after the FFN as an option (a fidelity review, 2026-11-25)
def test_adapter_sites_put_one_pfeiffer_adapter_after_the_ffn(tmp_path):
    config = DesignSpaceConfig(preset="adapter", budget=0.05, task_type="SEQ_CLS", adapter_sites=["ffn_out"])
    model = get_peft_model(make_model("bert", "SEQ_CLS"), config)
    per_layer = {}
    for name, param in model.named_parameters():
        if "designspace_adapter" in name:
            site = name.split(".designspace_adapter")[0]
            per_layer.setdefault(site, 0)
            per_layer[site] += param.numel()
    assert per_layer and all(site.endswith(".output.dense") and ".attention." not in site for site in per_layer)
    layers = model.peft_config["default"].plan["layers"]
    plan_widths = {p: s["adapter"] for layer in layers for p, s in layer["modules"].items() if "adapter" in s}
    d = 32  # hidden size of the tiny BERT
    for site, count in per_layer.items():  # methods.md 1.5: 2·d·r + r + d per layer
        r = plan_widths[site.removeprefix("base_model.model.")]
        assert count == 2 * d * r + r + d
    assert model.base_model.budget_report().realised == sum(per_layer.values())
    model.save_pretrained(tmp_path)
    assert DesignSpaceConfig.from_pretrained(tmp_path).adapter_sites == ["ffn_out"]


@pytest.mark.parametrize("sites", [["ffn_in"], [], 3, ["attn_out", "query"], [["attn_out"]]])
def test_bad_adapter_sites_name_the_field(sites):
    with pytest.raises((ValueError, TypeError), match=r"`adapter_sites` must be a non-empty list out of"):
        DesignSpaceConfig(adapter_sites=sites)


def test_adapter_units_are_not_dead_at_initialisation():
    """The down-projection kept nn.Linear's random bias: on a tiny Llama 46% of the ReLU units were inactive on every
    token at initialisation and, with `up` at zero, never got a gradient (an S4 review, 2026-11-25)."""
    torch.manual_seed(0)
    model = get_peft_model(make_model("llama", "CAUSAL_LM", layers=8), DesignSpaceConfig(preset="adapter", budget=0.1))
    active: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if name.endswith("designspace_adapter.default"):
            module.act.register_forward_hook(
                lambda _m, _i, out, name=name: active.__setitem__(name, (out.reshape(-1, out.shape[-1]) > 0).any(0))
            )
    model(input_ids=torch.randint(1, 100, (4, 12)), labels=torch.randint(1, 100, (4, 12))).loss.backward()
    units = torch.cat(list(active.values()))
    assert len(active) >= 8 and (~units).float().mean() < 0.05, f"{int((~units).sum())} of {units.numel()} dead"
    for name, module in model.named_modules():
        if name.endswith("designspace_adapter.default"):
            assert (module.up.weight.grad.norm(dim=0) > 0).float().mean() > 0.95  # the units learn
