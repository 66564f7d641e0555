"""PEFT features an experienced user calls on the pack's methods, each as plain PEFT LoRA behaves.

Mixed precision (`torch.autocast`, `Trainer(bf16=True)`), `low_cpu_mem_usage=True` (adapter weights created on the
meta device, then loaded), `safe_merge=True` with non-finite deltas, adapter dtypes with
`autocast_adapter_dtype=False`, and stacking on another method's adapter layers.
"""

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, inject_adapter_in_model
from s3pet_helpers import searched_structure
from tiny_models import make_inputs, make_model

from peft_designspace import DesignSpaceConfig, S3PETConfig, SAMTuningConfig

MODEL, TASK = "bert", "SEQ_CLS"


def _config(method: str) -> object:
    """A config of `method` with non-zero initial deltas (so that every part changes the outputs)."""
    if method == "s4":
        return DesignSpaceConfig(preset="s4", budget=0.05, task_type=TASK, init_weights=False)
    if method == "sam":
        return SAMTuningConfig(budget=0.05, task_type=TASK, init_weights=False)
    if method == "s3pet-apply":
        structure = searched_structure(MODEL, TASK, seed=1, layers=4)
        return S3PETConfig(structure=structure, task_type=TASK, init_weights=False)
    if method == "s3pet-search":
        return S3PETConfig(budget=1200, task_type=TASK, init_weights=False)
    raise KeyError(method)


def _logits(model, inputs: dict) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**inputs).logits


METHODS = ["s4", "sam", "s3pet-apply", "s3pet-search"]


def test_sam_backward_under_bf16_autocast_matches_float32():
    # the fused sparse linear's backward got a bf16 `grad_out` and a float32 weight: "expected m1 and m2 to have
    # the same dtype"
    model = get_peft_model(make_model(MODEL, TASK, layers=4), _config("sam"))
    model.train()
    inputs = make_inputs(MODEL, TASK)
    grads = {}
    for autocast in (False, True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), torch.random.fork_rng():
            torch.manual_seed(0)
            loss = model(**inputs).loss
        loss.backward()
        grads[autocast] = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    assert grads[True].dtype == torch.float32 and torch.isfinite(grads[True]).all()
    relative = (grads[True] - grads[False]).norm() / grads[False].norm()
    assert relative < 0.05, relative


@pytest.mark.parametrize("method", METHODS)
def test_low_cpu_mem_usage_loads_the_same_adapter(method, tmp_path):
    model = get_peft_model(make_model(MODEL, TASK, layers=4), _config(method))
    inputs = make_inputs(MODEL, TASK)
    expected = _logits(model, inputs)
    model.save_pretrained(tmp_path)

    loaded = PeftModel.from_pretrained(make_model(MODEL, TASK, layers=4), tmp_path, low_cpu_mem_usage=True)
    assert not any(p.device.type == "meta" for p in loaded.parameters())
    assert torch.allclose(_logits(loaded, inputs), expected, atol=1e-6)

    again = PeftModel.from_pretrained(make_model(MODEL, TASK, layers=4), tmp_path)
    again.load_adapter(tmp_path, adapter_name="other", low_cpu_mem_usage=True)
    again.set_adapter("other")
    assert torch.allclose(_logits(again, inputs), expected, atol=1e-6)

    empty = get_peft_model(make_model(MODEL, TASK, layers=4), _config(method), low_cpu_mem_usage=True)
    prefix = {"s4": "designspace_", "sam": "samtuning_"}.get(method, "s3pet_")
    assert any(p.device.type == "meta" for n, p in empty.named_parameters() if prefix in n)


def _poison(model, method: str) -> str:
    """Put a NaN into one mergeable bias (or LNFit) delta; returns the parameter's name."""
    wanted = {"s4": "designspace_bias", "sam": "samtuning_bias_values", "s3pet-apply": "s3pet_lnfit"}[method]
    name, parameter = next((n, p) for n, p in model.named_parameters() if wanted in n)
    with torch.no_grad():
        parameter.view(-1)[0] = float("nan")
    return name


@pytest.mark.parametrize("method", ["s4", "sam", "s3pet-apply"])
def test_safe_merge_refuses_non_finite_deltas_before_changing_anything(method):
    config = _config(method)
    if method == "sam":
        config = SAMTuningConfig(budget=0.05, task_type=TASK, init_weights=False, include_biases=True)
    model = get_peft_model(make_model(MODEL, TASK, layers=4), config)
    _poison(model, method)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    with pytest.raises(ValueError, match="safe_merge: NaNs or infs in the .* part of adapter 'default'"):
        model.merge_adapter(safe_merge=True)
    changed = [n for n, p in model.named_parameters() if n in base and not torch.equal(p, base[n])]
    assert changed == []
    assert not any(getattr(m, "merged_adapters", []) for m in model.modules())


@pytest.mark.parametrize("method", METHODS)
def test_stacking_on_another_methods_layers_is_refused_with_one_message(method):
    base = make_model(MODEL, TASK, layers=4)
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["query", "value"]), base, adapter_name="lora")
    with pytest.raises(ValueError, match=r"already holds 8 adapter layers of another method .*peft\.tuners\.lora"):
        inject_adapter_in_model(_config(method), base, adapter_name="second")


@pytest.mark.parametrize("method", METHODS)
def test_lora_injected_over_a_pack_adapter_runs_and_trains_both(method):
    # an S3PET search once looked its layers up by path and found LoRA's wrapper: 'Linear' has no 's3pet_alpha'
    base = make_model(MODEL, TASK, layers=4)
    inject_adapter_in_model(_config(method), base, adapter_name="pack")
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["query", "value"], init_lora_weights=False), base)
    base.train()
    base(**make_inputs(MODEL, TASK)).loss.backward()
    grads = {n: p.grad for n, p in base.named_parameters() if p.requires_grad}
    assert any(".pack" in n and g is not None and g.abs().max() > 0 for n, g in grads.items())
    assert any("lora_A" in n and g is not None and g.abs().max() > 0 for n, g in grads.items())


def test_s4_prefixes_follow_the_base_dtype_like_lora():
    base = make_model("llama", "CAUSAL_LM", layers=4).to(torch.bfloat16)
    config = DesignSpaceConfig(preset="prefix", budget=0.05, task_type="CAUSAL_LM")
    kept = get_peft_model(base, config, autocast_adapter_dtype=False)
    prefixes = {p.dtype for n, p in kept.named_parameters() if "designspace_prefix_kv" in n}
    assert prefixes == {torch.bfloat16}
    upcast = get_peft_model(make_model("llama", "CAUSAL_LM", layers=4).to(torch.bfloat16), config)
    assert {p.dtype for n, p in upcast.named_parameters() if "designspace_prefix_kv" in n} == {torch.float32}


@pytest.mark.parametrize("method", METHODS)
def test_adapter_layers_take_the_mode_of_the_model_they_go_into(method):
    """New modules start in train mode: injected into a model in eval mode (as `from_pretrained` gives it), the
    adapter parts were in train mode (their dropout on) until the next `model.eval()` or `model.train()`."""
    from peft.utils import ModulesToSaveWrapper

    def modes(model):  # PEFT's own modules (PeftModel, the tuner, the head's copy) start in train mode, as with LoRA
        head = {id(m) for w in model.modules() if isinstance(w, ModulesToSaveWrapper) for m in w.modules()}
        return {m.training for m in model.base_model.model.modules() if id(m) not in head}

    for training in (False, True):
        model = get_peft_model(make_model(MODEL, TASK, layers=4).train(training), _config(method))
        assert modes(model) == {training}, training
        model.add_adapter("other", _config(method))  # parts added to existing layers too
        assert modes(model) == {training}, training
