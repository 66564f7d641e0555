"""Faults found by reviews of half-precision use and of PEFT's less common API (2026-11-25), each compared with
PEFT's LoRA on the same tiny model:

- PEFT's dtype cast (`autocast_adapter_dtype`) and its device move after a `low_cpu_mem_usage` load re-wrap tensors
  kept in parameter dicts as trainable parameters, so adapters loaded for inference (or added inactive) came out
  trainable on bf16/fp16 bases, and an `is_trainable=False` model built an autograd graph;
- `peft.helpers.disable_input_dtype_casting` failed on every layer of the pack (no `cast_input_dtype_enabled`);
- an S3PET search whose α was cast to bf16/fp16 with the model computed keep probabilities in half precision, where
  `1 - 1e-7` is 1: a confident candidate made α's gradient NaN, and the trainer skipped every α step.
"""

import copy

import pytest
import torch
from peft import PeftModel, get_peft_model
from peft.helpers import disable_input_dtype_casting
from s3pet_helpers import searched_structure
from tiny_models import make_inputs, make_model

from peft_designspace import DesignSpaceConfig, S3PETConfig, SAMTuningConfig

STRUCTURE = searched_structure("bert", "SEQ_CLS")

CONFIGS = {
    "designspace": lambda **kw: DesignSpaceConfig(task_type="SEQ_CLS", preset="s4", budget=0.05, **kw),
    "samtuning": lambda **kw: SAMTuningConfig(task_type="SEQ_CLS", budget=0.05, init_weights=False, **kw),
    "s3pet-apply": lambda **kw: S3PETConfig(task_type="SEQ_CLS", structure=STRUCTURE, **kw),
    "s3pet-search": lambda **kw: S3PETConfig(task_type="SEQ_CLS", budget=0.05, **kw),
}
HALF = [torch.bfloat16, torch.float16]


def _base(dtype=torch.float32):
    return make_model("bert", "SEQ_CLS").to(dtype)


def _trainable(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folders = {}
    for method, config in CONFIGS.items():
        folder = tmp_path_factory.mktemp(method)
        get_peft_model(_base(), config()).save_pretrained(folder)
        folders[method] = folder
    return folders


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("method", CONFIGS)
def test_inference_load_on_a_half_precision_base_trains_nothing(method, dtype, saved):
    model = PeftModel.from_pretrained(_base(dtype), saved[method])  # is_trainable=False
    assert _trainable(model) == []
    inputs = make_inputs("bert", "SEQ_CLS")
    inputs.pop("labels", None)
    assert not model(**inputs).logits.requires_grad
    trainable = PeftModel.from_pretrained(_base(dtype), saved[method], is_trainable=True)
    reference = PeftModel.from_pretrained(_base(), saved[method], is_trainable=True)
    assert _trainable(trainable) == _trainable(reference) != []


@pytest.mark.parametrize("method", CONFIGS)
def test_inference_mode_config_and_inactive_adapter_stay_frozen_on_bf16(method):
    model = get_peft_model(_base(torch.bfloat16), CONFIGS[method](inference_mode=True))
    assert _trainable(model) == []
    model = get_peft_model(_base(torch.bfloat16), CONFIGS[method]())
    model.add_adapter("other", CONFIGS[method]())
    assert not [n for n in _trainable(model) if ".other" in n]
    assert [n for n in _trainable(model) if ".default" in n]


@pytest.mark.parametrize("method", CONFIGS)
def test_low_memory_load_of_a_bf16_saved_adapter_stays_frozen(method, tmp_path):
    get_peft_model(_base(torch.bfloat16), CONFIGS[method](), autocast_adapter_dtype=False).save_pretrained(tmp_path)
    model = PeftModel.from_pretrained(_base(), tmp_path, low_cpu_mem_usage=True)
    assert _trainable(model) == []


@pytest.mark.parametrize("method", CONFIGS)
def test_disable_input_dtype_casting_works_as_for_lora(method):
    model = get_peft_model(_base(), CONFIGS[method]()).eval()
    inputs = make_inputs("bert", "SEQ_CLS")
    with torch.no_grad():
        expected = model(**inputs).logits
        with disable_input_dtype_casting(model):
            inside = model(**inputs).logits
    torch.testing.assert_close(inside, expected)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_s3pet_search_cast_to_half_precision_keeps_alpha_gradients_finite(dtype):
    model = get_peft_model(_base(), CONFIGS["s3pet-search"](init_weights=False)).to(dtype)  # non-zero deltas
    alphas = model.base_model.architecture_parameters()
    assert alphas[0].dtype == dtype
    with torch.no_grad():
        alphas[0][0] = 12.0  # a confident candidate: p ≈ 1 - 7e-6, which half precision rounds to 1
    p, _, _ = model.base_model.keep_probabilities()
    assert p.dtype == torch.float32 and bool((p < 1).all())
    model.train()
    torch.manual_seed(0)
    model(**make_inputs("bert", "SEQ_CLS")).loss.backward()
    grad = torch.cat([a.grad.float().reshape(-1) for a in alphas])
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


# merging into half-precision weights ---------------------------------------------------------------------------------
def _merge_configs():
    structure = searched_structure("llama", "CAUSAL_LM", space="l")
    return {
        "designspace": DesignSpaceConfig(task_type="CAUSAL_LM", preset="lora", budget=0.05, init_weights=False),
        "samtuning": SAMTuningConfig(task_type="CAUSAL_LM", budget=0.05, init_weights=False),
        "s3pet-apply": S3PETConfig(task_type="CAUSAL_LM", structure=structure, init_weights=False),
    }


def _base_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}


@pytest.mark.parametrize("method", ["designspace", "samtuning", "s3pet-apply"])
def test_safe_merge_refuses_a_delta_that_overflows_a_float16_weight(method):
    model = get_peft_model(make_model("llama").to(torch.float16), _merge_configs()[method])
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad and "layers.0." in n}
    with torch.no_grad():  # one finite float32 delta entry far above float16's largest value (65504)
        if method == "samtuning":
            next(iter(trainable.values())).view(-1)[0] = 1e6
        else:  # LoRA: B A with one large entry of B and A all ones
            b_name = next(n for n in trainable if n.endswith(".B.weight"))
            trainable[b_name].view(-1)[0] = 1e6
            trainable[b_name.replace(".B.weight", ".A.weight")].fill_(1.0)
    before = _base_weights(model)
    with pytest.raises(ValueError, match=r"safe_merge: NaNs or infs in the .* part of adapter 'default' \(merged"):
        model.merge_adapter(safe_merge=True)
    after = _base_weights(model)
    assert all(torch.equal(before[n], after[n]) for n in before)


@pytest.mark.parametrize("method", ["designspace", "s3pet-apply"])
def test_merge_into_bfloat16_weights_rounds_once_as_lora_does(method):
    model = get_peft_model(make_model("llama").to(torch.bfloat16), _merge_configs()[method])
    exact = copy.deepcopy(model).double()
    model.merge_adapter()
    exact.merge_adapter()
    merged, reference = _base_weights(model), _base_weights(exact)
    changed = [n for n in merged if not torch.equal(reference[n].to(torch.bfloat16), merged[n]) or "proj" in n]
    assert changed
    for name in changed:  # every entry is the correctly rounded bfloat16 of the exact sum
        assert torch.equal(merged[name], reference[name].to(torch.bfloat16)), name


# PEFT's low-level API ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", CONFIGS)
def test_inject_adapter_in_model_from_a_state_dict_loads_every_part(method):
    """With `state_dict=`, PEFT read module paths off the keys and missed S4's prefix holders: prefixes dropped."""
    from peft import get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict

    torch.manual_seed(0)
    nonzero = {} if method == "samtuning" else {"init_weights": False}  # SAM's config sets it already
    source = inject_adapter_in_model(CONFIGS[method](**nonzero), _base())
    state = get_peft_model_state_dict(source)
    target = inject_adapter_in_model(CONFIGS[method](), _base(), state_dict=state)
    result = set_peft_model_state_dict(target, state)
    assert result.unexpected_keys == []
    inputs = make_inputs("bert", "SEQ_CLS")
    inputs.pop("labels", None)
    with torch.no_grad():
        torch.testing.assert_close(target.eval()(**inputs).logits, source.eval()(**inputs).logits)


def test_sam_keeps_float64_precision_on_its_unfused_path():
    """A hooked base layer takes SAM's unfused sparse product, which computed the delta in float32 (1e-7 off)."""
    model = get_peft_model(_base(torch.float64), CONFIGS["samtuning"]()).eval()
    name, layer = next((n, m) for n, m in model.named_modules() if n.endswith("attention.self.query"))
    layer.get_base_layer().register_forward_hook(lambda module, args, output: None)  # no change, but not fused
    merged = dict(copy.deepcopy(model).merge_and_unload().named_modules())[name.replace("base_model.model.", "")]
    x = torch.randn(2, 7, layer.get_base_layer().in_features, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), merged(x), atol=1e-13, rtol=0)


@pytest.mark.parametrize("method", ["designspace-lora", "samtuning"])
def test_export_to_peft_is_not_marked_exact_on_a_half_precision_base(method, tmp_path):
    """`exact` promises bit-identical outputs; on a bf16 base plain PEFT rounds once where the pack rounds twice."""
    from adapters_hub import export_to_peft

    def config():
        if method == "samtuning":
            return CONFIGS["samtuning"]()
        return DesignSpaceConfig(task_type="SEQ_CLS", preset="lora", budget=0.05, init_weights=False)

    inputs = make_inputs("bert", "SEQ_CLS")
    inputs.pop("labels", None)
    exact = export_to_peft(get_peft_model(_base(), config()), tmp_path / "fp32", check_inputs=inputs)
    assert exact.exact and exact.max_abs_diff == 0
    half = export_to_peft(get_peft_model(_base(torch.bfloat16), config()), tmp_path / "bf16", check_inputs=inputs)
    assert not half.exact and any("half-precision base weights (bfloat16)" in note for note in half.notes)


def test_sam_refuses_a_tensor_too_large_for_int32_indices(monkeypatch):
    """Indices are int32: entry 2,147,483,651 of a larger tensor was stored as -2,147,483,645 (a review of scaling)."""
    import peft_designspace.samtuning.model as sam_model

    # the tiny BERT's 32 × 32 projections have 1,024 entries (raising=False: the test also runs, and fails, without
    # the check)
    monkeypatch.setattr(sam_model, "MAX_ENTRIES", 1000, raising=False)
    with pytest.raises(ValueError, match=r"int32 flat indices.*at most 1,000 entries; 'bert\.encoder\..*' has 1,024"):
        get_peft_model(_base(), CONFIGS["samtuning"]())


@pytest.mark.parametrize("method", ["designspace", "samtuning"])
def test_safe_merge_on_a_forward_only_quantized_base_names_the_backend(method):
    """The safe-merge pre-check read the base weight, which a GPTQ/AWQ backend cannot give (PEFT's TypeError)."""
    from peft.utils.quantization_utils import ForwardOnlyQuantizationBackend

    config = _merge_configs()[method]
    model = get_peft_model(make_model("llama"), config)
    for module in model.modules():
        if hasattr(module, "quantization_backend") and hasattr(module, "merge"):
            module.quantization_backend = ForwardOnlyQuantizationBackend("gptq")
    for safe in (False, True):
        with pytest.raises(ValueError, match="cannot be merged into: .*forward-only"):
            model.merge_adapter(safe_merge=safe)
