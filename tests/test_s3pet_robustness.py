"""S3PET edge cases: generation in search mode, hand-written structures and spaces, adapter deletion, copies, α
shapes, and bias deltas on bias-free linears."""

import copy

import common
import pytest
import torch
from peft import get_peft_model
from tiny_models import make_inputs, make_model

from peft_designspace import DesignSpaceConfig, S3PETConfig
from peft_designspace.s3pet.plot import module_layer, structure_grid
from peft_designspace.s3pet.structure import FORMAT, load_structure

QUERY = "bert.encoder.layer.0.attention.self.query"  # hidden 32: LoRA rank r has 64·r parameters, BitFit 32
KEY = "bert.encoder.layer.1.attention.self.key"


def _structure(*modules: dict) -> dict:
    """A hand-written structure: only what a user must give per module."""
    return {"format": FORMAT, "version": 1, "modules": [dict(m) for m in modules]}


def _search_model(model_id: str, task: str | None = None, budget: int = 3000, seed: int = 0, **config):
    """A search-mode model with random α (so `p` differs between candidates) and random deltas."""
    base = make_model(model_id, task, hidden=64, layers=4)
    model = get_peft_model(base, S3PETConfig(budget=budget, init_weights=False, task_type=task, **config))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for alpha in model.base_model.architecture_parameters():
            alpha.copy_(torch.randn(alpha.shape, generator=generator) * 3)
    return model


# generation in search mode --------------------------------------------------------------------------------------
def _generate_args() -> dict:
    x = make_inputs("t5", batch=1)
    return {
        "input_ids": x["input_ids"],
        "attention_mask": x["attention_mask"],
        "max_new_tokens": 3,
        "do_sample": False,
        "output_scores": True,
        "return_dict_in_generate": True,
    }


@pytest.mark.parametrize("task", [None, "SEQ_2_SEQ_LM"], ids=["peftmodel", "seq2seq"])
def test_t5_generate_works_on_a_fresh_search_model(task):
    model = _search_model("t5", task).eval()
    out = model.generate(**_generate_args())
    assert out.sequences.shape == (1, 4)
    assert all(torch.isfinite(s).all() for s in out.scores)


@pytest.mark.parametrize("task", [None, "SEQ_2_SEQ_LM"], ids=["peftmodel", "seq2seq"])
def test_t5_eval_generate_after_a_train_forward_uses_the_keep_probabilities(task):
    model = _search_model("t5", task)
    batch = make_inputs("t5")
    model.eval()
    model(**batch)  # gates z = p
    reference = model.generate(**_generate_args()).scores
    for seed in range(2):
        torch.manual_seed(seed)
        model.train()
        model(**batch)  # gates z sampled
        model.eval()
        scores = model.generate(**_generate_args()).scores
        for got, expected in zip(scores, reference, strict=True):
            torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_t5_encoder_called_alone_after_a_train_forward_uses_the_keep_probabilities():
    model = _search_model("t5")
    x = make_inputs("t5")
    encoder_inputs = {"input_ids": x["input_ids"], "attention_mask": x["attention_mask"]}
    model.eval()
    model(**x)
    expected = model.get_encoder()(**encoder_inputs).last_hidden_state
    model.train()
    model(**x)
    model.eval()
    torch.testing.assert_close(model.get_encoder()(**encoder_inputs).last_hidden_state, expected, atol=0, rtol=0)


def test_a_forward_draws_its_gates_once():
    model = _search_model("t5").train()
    draws = []
    original = model.base_model._refresh_gates
    model.base_model._refresh_gates = lambda: draws.append(1) or original()
    model(**make_inputs("t5"))  # the encoder runs inside the model's forward: no second draw
    assert len(draws) == 1


# hand-written structures ----------------------------------------------------------------------------------------
def test_structure_rejects_a_repeated_module():
    lora = {"path": QUERY, "type": "lora", "size": 64, "rank": 1}
    with pytest.raises(ValueError, match=rf"repeats the 'lora' module on '{QUERY}'"):
        load_structure(_structure(lora, {**lora, "rank": 2, "size": 128}))
    # the same module with another type is fine
    assert len(load_structure(_structure(lora, {"path": QUERY, "type": "bitfit", "size": 32}))["modules"]) == 2


@pytest.mark.parametrize("rank", [0, -1, 1.7, "x", True])
def test_structure_rejects_a_bad_lora_rank(rank):
    with pytest.raises(ValueError, match=rf"\({QUERY}\) has `rank` {rank!r}.*positive int"):
        S3PETConfig(structure=_structure({"path": QUERY, "type": "lora", "size": 64, "rank": rank}))


@pytest.mark.parametrize("rank", [2, 1.0, True])
def test_structure_rejects_a_rank_on_other_types(rank):
    with pytest.raises(ValueError, match=rf"has `rank` {rank!r}, but a 'bitfit' module takes no rank"):
        load_structure(_structure({"path": QUERY, "type": "bitfit", "size": 32, "rank": rank}))


def test_structure_lora_rank_defaults_to_one_and_other_types_take_none_or_zero():
    structure = _structure(
        {"path": QUERY, "type": "lora", "size": 64},
        {"path": QUERY, "type": "bitfit", "size": 32, "rank": 0},
        {"path": KEY, "type": "bitfit", "size": 32},
    )
    model = get_peft_model(make_model("bert"), S3PETConfig(structure=structure))
    trainable = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "s3pet_" in n)
    assert trainable == 64 + 32 + 32
    assert model.base_model.model.get_submodule(QUERY).s3pet_lora["default"].A.weight.shape[0] == 1


def test_structure_edited_after_the_config_is_checked_again():
    config = S3PETConfig(structure=_structure({"path": QUERY, "type": "lora", "size": 64, "rank": 1}))
    config.structure["modules"][0]["rank"] = 0
    with pytest.raises(ValueError, match=r"has `rank` 0"):
        get_peft_model(make_model("bert"), config)


def test_structure_fills_total_and_budget_and_leaves_the_input_alone():
    given = _structure({"path": QUERY, "type": "lora", "size": 64}, {"path": KEY, "type": "bitfit", "size": 32})
    loaded = load_structure(given)
    assert (loaded["total"], loaded["budget"]) == (96, 96)
    assert "total" not in given and "budget" not in given
    assert load_structure({**given, "budget": 500})["budget"] == 500


@pytest.mark.parametrize("field", ["total", "budget"])
@pytest.mark.parametrize("value", ["96", True, 0])
def test_structure_rejects_a_bad_total_or_budget(field, value):
    structure = {**_structure({"path": QUERY, "type": "lora", "size": 64}), field: value}
    with pytest.raises(ValueError, match=rf"`structure\['{field}'\]`"):
        load_structure(structure)


def test_structure_rejects_a_budget_below_its_total():
    structure = {**_structure({"path": QUERY, "type": "lora", "size": 64}), "budget": 63}
    with pytest.raises(ValueError, match=r"`structure\['budget'\]` is 63, but the kept modules hold 64 parameters"):
        load_structure(structure)
    assert load_structure({**structure, "budget": 64})["budget"] == 64


@pytest.mark.parametrize("version", [99, 0])
def test_structure_rejects_a_version_it_cannot_read(version):
    structure = {**_structure({"path": QUERY, "type": "lora", "size": 64}), "version": version}
    with pytest.raises(ValueError, match=r"`structure\['version'\]` is .*reads versions 1 to 1"):
        load_structure(structure)
    assert load_structure({**structure, "version": 1})["version"] == 1


@pytest.mark.parametrize("field", ["version", "total", "budget"])
@pytest.mark.parametrize("value", ["1", 64.0, None])
def test_structure_fields_that_are_not_ints_say_so(field, value):
    """`"version": 1.0` asked to upgrade the package, and `"total": 64.0` said it "is 64.0, but the sizes add up to
    64" (a review of 2026-11-25)."""
    structure = {**_structure({"path": QUERY, "type": "lora", "size": 64}), field: value}
    with pytest.raises(ValueError, match=rf"`structure\['{field}'\]` must be an int .*got {value!r}") as info:
        load_structure(structure)
    assert "upgrade" not in str(info.value) and "add up to" not in str(info.value)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_structure_with_numpy_or_torch_p_saves_and_reads_back(kind, tmp_path):
    """A `p` of numpy or torch was accepted, then `save_pretrained` failed (not JSON serializable) and
    `save_structure` wrote it as a string that `load_structure` refused as a diverged search."""
    import numpy as np

    from peft_designspace.s3pet.structure import save_structure

    p = np.float32(0.25) if kind == "numpy" else torch.tensor(0.25)
    structure = _structure({"path": QUERY, "type": "lora", "size": 64, "p": p})
    loaded = load_structure(structure)
    assert type(loaded["modules"][0]["p"]) is float and loaded["modules"][0]["p"] == 0.25
    assert structure["modules"][0]["p"] is p  # the input is left alone
    model = get_peft_model(make_model("bert"), S3PETConfig(structure=structure))
    model.save_pretrained(tmp_path / "adapter")
    save_structure(structure, tmp_path / "structure.json")
    assert load_structure(tmp_path / "structure.json")["modules"][0]["p"] == 0.25


@pytest.mark.parametrize(("task", "head"), [("SEQ_CLS", "classifier"), (None, "pooler.dense")])
def test_structure_on_a_module_saved_in_full_is_refused_naming_it(task, head):
    """A module on the task head (PEFT's `modules_to_save`) failed inside PEFT with a TypeError naming neither the
    structure nor the module."""
    structure = _structure({"path": "classifier", "type": "lora", "size": 34})
    base = make_model("bert", task)
    if task is None:
        structure = _structure({"path": "bert.pooler.dense", "type": "lora", "size": 64})
        config = S3PETConfig(structure=structure, modules_to_save=["pooler"])
    else:
        config = S3PETConfig(structure=structure, task_type=task)
    with pytest.raises(ValueError, match=rf"module 0 puts a 'lora' module on .* inside '.*{head.split('.')[0]}'"):
        get_peft_model(base, config)


@pytest.mark.parametrize(
    ("field", "value"), [("layer", "3"), ("layer", -1), ("layer", True), ("layer", 2.0), ("role", 5), ("role", "")]
)
def test_structure_rejects_a_bad_layer_or_role_naming_the_module(field, value):
    structure = _structure({"path": QUERY, "type": "lora", "size": 64, field: value})
    with pytest.raises(ValueError, match=rf"\[0\]` \({QUERY}\) has `{field}` "):
        load_structure(structure)


def test_structure_accepts_the_layer_and_role_the_search_writes():
    module = {"path": QUERY, "type": "lora", "size": 64, "layer": 0, "role": "query"}
    assert load_structure(_structure(module))["modules"][0] == module


def test_structure_rejects_a_total_that_is_not_the_sum_of_the_sizes():
    structure = {**_structure({"path": QUERY, "type": "lora", "size": 64}), "total": 65}
    with pytest.raises(ValueError, match=r"`structure\['total'\]` is 65, but the modules' sizes add up to 64"):
        load_structure(structure)


def test_minimal_structure_saves_with_its_heatmap_and_reloads(tmp_path):
    from peft import PeftModel

    structure = _structure({"path": QUERY, "type": "lora", "size": 64, "rank": 1})
    model = get_peft_model(make_model("bert"), S3PETConfig(structure=structure, init_weights=False)).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "s3pet_structure.png").is_file()
    reloaded = PeftModel.from_pretrained(make_model("bert"), tmp_path)
    inputs = make_inputs("bert")
    torch.testing.assert_close(common.outputs(reloaded, inputs), common.outputs(model, inputs), atol=1e-6, rtol=0)


def test_heatmap_places_modules_without_layer_by_the_first_integer_in_their_path():
    modules = [
        {"path": "bert.encoder.layer.3.output.dense", "type": "lora", "size": 1},
        {"path": "bert.encoder.layer.1.output.dense", "type": "lora", "size": 1, "layer": 7},  # given: kept
        {"path": "classifier", "type": "lora", "size": 1},  # no integer
    ]
    assert [module_layer(m) for m in modules] == [3, 7, -1]
    rows, layers, grid = structure_grid(modules)
    assert layers == [-1, 3, 7]
    assert sum(v for row in grid for v in row if v == v) == 3  # NaN (no module there) left out


# user search spaces ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["role", "r"])
def test_search_space_rejects_unknown_keys(key):
    with pytest.raises(ValueError, match=rf"`search_space\[0\]` has unknown keys \['{key}'\]"):
        S3PETConfig(search_space=[{"type": "lora", "roles": ["query"], key: 4}])


@pytest.mark.parametrize("roles", [[["query"]], ["query", 3], [None]])
def test_search_space_roles_must_be_names(roles):
    """Nested lists failed with a bare "unhashable type: 'list'"."""
    with pytest.raises(ValueError, match=r"`search_space\[0\]\['roles'\]` must be a non-empty list of role names"):
        S3PETConfig(search_space=[{"type": "lora", "roles": roles}])


def test_search_space_rejects_a_rank_on_other_types():
    with pytest.raises(ValueError, match=r"`search_space\[0\]\['rank'\]` is 4, but only 'lora' entries take a rank"):
        S3PETConfig(search_space=[{"type": "bitfit", "roles": ["query"], "rank": 4}])


@pytest.mark.parametrize(
    ("model_id", "roles", "module"),
    [
        ("bert", ["query", "query"], "bert.encoder.layer.0.attention.self.query"),
        ("gpt2", ["query", "key"], "transformer.h.0.attn.c_attn"),  # fused: one module, two roles
    ],
)
def test_search_space_rejects_two_lora_ranks_on_one_module(model_id, roles, module):
    space = [{"type": "lora", "roles": [roles[0]], "rank": 1}, {"type": "lora", "roles": [roles[1]], "rank": 4}]
    with pytest.raises(ValueError, match=rf"gives '{module}' LoRA candidates of rank 1 .* and rank 4"):
        get_peft_model(make_model(model_id), S3PETConfig(budget=300, search_space=space))


def test_search_space_accepts_one_rank_through_several_roles():
    space = [{"type": "lora", "roles": ["query"], "rank": 2}, {"type": "lora", "roles": ["key"], "rank": 2}]
    model = get_peft_model(make_model("gpt2"), S3PETConfig(budget=500, search_space=space))
    candidates = model.base_model.candidates()
    assert {c.rank for c in candidates} == {2}
    assert len(candidates) == len({c.path for c in candidates})  # one candidate per fused c_attn


# deleting adapters ----------------------------------------------------------------------------------------------
def test_delete_adapter_then_re_add_the_name_with_another_space():
    model = _search_model("llama")
    structure = model.base_model.derive_structure()
    model.add_adapter("applied", S3PETConfig(structure=structure))
    model.set_adapter("applied")
    model.delete_adapter("default")
    for layer in model.base_model.model.modules():
        if hasattr(layer, "part_types"):
            assert "default" not in layer.part_types and "default" not in layer.gates
    model.add_adapter("default", S3PETConfig(budget=2000, search_space="l"))
    model.set_adapter("default")
    alphas = model.base_model.architecture_parameters()
    assert sum(a.numel() for a in alphas) == len(model.base_model.candidates()) == 28  # 4 layers × 7 projections
    model.train()
    model(**make_inputs("llama")).loss.backward()
    assert all(a.grad is not None for a in alphas)


def test_deleting_the_last_search_adapter_removes_the_gate_hooks():
    model = _search_model("t5")
    model.add_adapter("applied", S3PETConfig(structure=model.base_model.derive_structure()))
    model.set_adapter("applied")
    tuner = model.base_model
    hooked = [tuner.model, tuner.model.get_encoder()]
    assert tuner.model._forward_pre_hooks
    model.delete_adapter("default")
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in hooked)
    assert "default" not in tuner._s3pet
    model.eval()
    model(**make_inputs("t5"))  # the applied structure still runs


# copies ---------------------------------------------------------------------------------------------------------
def test_deepcopy_after_a_training_forward():
    model = _search_model("bert").train()
    inputs = make_inputs("bert")
    model(**inputs).loss.backward()
    clone = copy.deepcopy(model)
    torch.testing.assert_close(common.outputs(clone, inputs), common.outputs(model, inputs), atol=0, rtol=0)
    with torch.no_grad():  # the copy's gates come from its own α
        clone.base_model.architecture_parameters()[0].add_(5.0)
    assert not torch.equal(common.outputs(clone, inputs), common.outputs(model, inputs))


def test_gates_stay_on_the_layers_after_the_forward():
    """Non-reentrant activation checkpointing replays the layers in the backward pass, reading these gates."""
    model = _search_model("bert").train()
    model(**make_inputs("bert"))
    layer = model.base_model.model.get_submodule(QUERY)
    assert layer.gates["default"] and all(g.requires_grad for g in layer.gates["default"].values())


def test_a_submodule_called_directly_refuses_gates_drawn_for_the_other_mode():
    """Calling the encoder directly in eval mode after a training forward silently used that forward's sampled gates
    (0.1 off the `z = p` output, a review of 2026-11-25); `gated_call()` draws gates for such a call."""
    model = _search_model("bert", task="SEQ_CLS")
    inputs = make_inputs("bert", "SEQ_CLS")
    features = {k: v for k, v in inputs.items() if k != "labels"}
    encoder = model.base_model.model.bert
    model.eval()
    with torch.no_grad():
        model(**inputs)  # eval forward: z = p
        expected = encoder(**features).last_hidden_state
    model.train()
    model(**inputs)  # training forward: sampled gates
    model.eval()
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"drawn for a train-mode forward.*runs in eval mode"):
        encoder(**features)
    with torch.no_grad(), model.base_model.gated_call():
        got = encoder(**features).last_hidden_state
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    model.train()  # and the other way round: the gates left by the eval call are p, without noise
    with pytest.raises(RuntimeError, match=r"drawn for an eval-mode forward.*runs in train mode"):
        encoder(**features)


@pytest.mark.parametrize("idiom", ["encoder-eval-while-training", "mc-dropout"])
def test_a_model_with_parts_in_another_mode_still_runs_through_its_peft_model(idiom):
    """Training with the encoder's dropout off, or MC-dropout at inference: the layers' mode differs from the
    model's, and the first version of the check above refused these forwards (a review of 2026-11-25)."""
    model = _search_model("bert", task="SEQ_CLS")
    inputs = make_inputs("bert", "SEQ_CLS")
    encoder = model.base_model.model.bert
    if idiom == "encoder-eval-while-training":
        model.train()
        encoder.eval()
        model(**inputs).loss.backward()
        assert any(a.grad is not None for a in model.base_model.architecture_parameters())
    else:
        model.eval()
        encoder.train()
        with torch.no_grad():
            first, second = model(**inputs).logits, model(**inputs).logits
        assert not torch.equal(first, second)  # dropout on: two different outputs


# α shapes -------------------------------------------------------------------------------------------------------
def test_alpha_of_the_wrong_count_is_rejected():
    model = _search_model("bert")
    n_modules = len(model.base_model.architecture_parameters())
    n_values = len(model.base_model.candidates())
    message = rf"`alpha` must hold {n_modules} tensors \({n_values} values\).*got 1 \(1 values\)"
    with pytest.raises(ValueError, match=message):
        model.base_model.derive_structure(alpha=[torch.tensor([5.0])])
    with pytest.raises(ValueError, match=message):
        model.base_model.keep_probabilities(alpha=[torch.tensor([5.0])])


def test_alpha_of_the_wrong_size_is_rejected():
    model = _search_model("bert")
    alpha = [a.detach().clone() for a in model.base_model.architecture_parameters()]
    expected = alpha[2].numel()
    alpha[2] = alpha[2][:-1]
    with pytest.raises(ValueError, match=rf"`alpha\[2\]` must have {expected} values.*got {expected - 1}"):
        model.base_model.derive_structure(alpha=alpha)


def test_alpha_of_the_right_shape_is_used():
    model = _search_model("bert")
    alpha = [a.detach().clone() for a in model.base_model.architecture_parameters()]
    assert model.base_model.derive_structure(alpha=alpha) == model.base_model.derive_structure()
    flipped = [-a for a in alpha]
    assert model.base_model.derive_structure(alpha=flipped) != model.base_model.derive_structure()


# bias deltas on bias-free linears -------------------------------------------------------------------------------
LLAMA_QUERY = "model.layers.0.self_attn.q_proj"


def _bias_free_models():
    s3pet = S3PETConfig(
        task_type="CAUSAL_LM",
        init_weights=False,
        structure=_structure(
            {"path": LLAMA_QUERY, "type": "bitfit", "size": 32},
            {"path": LLAMA_QUERY, "type": "lora", "size": 64},
        ),
    )
    designspace = DesignSpaceConfig(
        task_type="CAUSAL_LM", preset=None, group_strategies=[["bitfit", "lora"]] * 4, budget=0.05, init_weights=False
    )
    return [s3pet, designspace]


@pytest.mark.parametrize("config", _bias_free_models(), ids=["s3pet", "designspace"])
def test_bias_delta_on_a_bias_free_linear_is_never_merged(config):
    model = get_peft_model(make_model("llama"), config)
    inputs = make_inputs("llama")
    expected = common.outputs(model, inputs)
    base_q = model.base_model.model.get_submodule(LLAMA_QUERY).get_base_layer()
    assert any("the layer has no bias" in p for p in model.base_model.unmergeable_parts())
    with pytest.raises(ValueError, match=r"the layer has no bias.*partial=True"):
        model.merge_and_unload()
    model.merge_adapter()  # LoRA merged, the bias delta still added in the forward
    assert base_q.bias is None
    torch.testing.assert_close(common.outputs(model, inputs), expected, atol=1e-5, rtol=0)
    model.unmerge_adapter()
    torch.testing.assert_close(common.outputs(model, inputs), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("config", _bias_free_models(), ids=["s3pet", "designspace"])
def test_partial_merge_drops_the_bias_delta_and_reloads_the_same(config, tmp_path):
    from transformers import AutoModelForCausalLM

    model = get_peft_model(make_model("llama"), config)
    inputs = make_inputs("llama")
    with pytest.warns(UserWarning, match="non-mergeable"):
        merged = model.merge_and_unload(partial=True)
    assert merged.get_submodule(LLAMA_QUERY).bias is None
    merged.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(common.outputs(reloaded, inputs), common.outputs(merged, inputs), atol=1e-6, rtol=0)
