"""Faults found by reviews of half-precision use and of PEFT's less common API (2026-11-25), each compared with
PEFT's LoRA on the same tiny model:

- PEFT's dtype cast (`autocast_adapter_dtype`) and its device move after a `low_cpu_mem_usage` load re-wrap tensors
  kept in parameter dicts as trainable parameters, so adapters loaded for inference (or added inactive) came out
  trainable on bf16/fp16 bases, and an `is_trainable=False` model built an autograd graph;
- `peft.helpers.disable_input_dtype_casting` failed on every layer of the pack (no `cast_input_dtype_enabled`);
- an S3PET search whose α was cast to bf16/fp16 with the model computed keep probabilities in half precision, where
  `1 - 1e-7` is 1: a confident candidate made α's gradient NaN, and the trainer skipped every α step.
"""

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
