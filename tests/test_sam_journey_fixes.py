"""SAM faults found by a user-journey review: frozen values under an input gradient, Hutchinson curvature through a
fused attention kernel, and options refused at construction instead of failing later."""

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors import safe_open
from tiny_models import make_inputs, make_model

from peft_designspace import SAMTuningConfig, calibrate_sam
from trainer_ext import SAMCalibrationCallback

TASK = "SEQ_CLS"


def test_input_gradient_through_a_frozen_sam_adapter(tmp_path):
    # an adapter loaded for inference (values frozen), then a saliency map: the fused op returned one gradient too
    # few ("returned an incorrect number of gradients")
    inputs = make_inputs("bert", TASK, batch=2)
    model = get_peft_model(make_model("bert", TASK), SAMTuningConfig(budget=0.02, task_type=TASK, init_weights=False))
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(make_model("bert", TASK), tmp_path)
    assert not any(p.requires_grad for n, p in loaded.named_parameters() if "samtuning_" in n)
    embeds = loaded.get_input_embeddings()(inputs["input_ids"]).detach().requires_grad_(True)
    loaded(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], labels=inputs["labels"]).loss.backward()
    assert embeds.grad is not None and embeds.grad.abs().sum() > 0


def test_calibrating_a_second_adapter_while_the_first_is_frozen():
    inputs = make_inputs("bert", TASK, batch=2)
    first = SAMTuningConfig(budget=0.02, task_type=TASK, target_modules=["query"])
    model = get_peft_model(make_model("bert", TASK), first, adapter_name="first")
    calibrate_sam(model, [inputs], show_progress=False)
    model.add_adapter("second", SAMTuningConfig(budget=0.02, task_type=TASK, target_modules=["value"]))
    assert calibrate_sam(model, [inputs], adapter_name="second", show_progress=False)


def test_hutchinson_through_sdpa_attention_names_the_fix():
    base = make_model("bert", TASK)
    base.set_attn_implementation("sdpa")
    model = get_peft_model(base, SAMTuningConfig(budget=0.02, task_type=TASK, curvature="hutchinson"))
    batches = [make_inputs("bert", TASK, batch=4, seed=s) for s in range(2)]
    with pytest.raises(ValueError, match="curvature='hutchinson'.*attn_implementation=\"eager\""):
        calibrate_sam(model, batches, show_progress=False)


@pytest.mark.parametrize("field", ["target_modules", "exclude_modules"])
@pytest.mark.parametrize("value", [5, [1, "query"], {"query": 1}])
def test_module_lists_of_the_wrong_type_are_refused_by_name(field, value):
    with pytest.raises(TypeError, match=f"`{field}` must be None, a regex string or a list of module names"):
        SAMTuningConfig(**{field: value})


def test_all_linear_is_refused_with_the_default_named():
    with pytest.raises(ValueError, match="'all-linear'.*leave `target_modules=None`"):
        SAMTuningConfig(target_modules="all-linear")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_grad_norm": -1}, ValueError),
        ({"max_grad_norm": 0}, ValueError),
        ({"max_grad_norm": True}, ValueError),
        ({"dataloader": 5}, TypeError),
    ],
)
def test_calibration_callback_checks_its_options_at_construction(kwargs, error):
    name = next(iter(kwargs))
    with pytest.raises(error, match=f"`{name}`"):
        SAMCalibrationCallback(2, **kwargs)


def test_save_dtype_set_before_the_last_save_applies_to_that_file(tmp_path):
    # the way docs/samtuning.md gives for exact resumes: train with full-precision checkpoints, round the shared file
    model = get_peft_model(make_model("bert", TASK), SAMTuningConfig(budget=0.02, task_type=TASK, init_weights=False))
    model.save_pretrained(tmp_path / "full")
    model.peft_config["default"].save_dtype = "bfloat16"
    model.save_pretrained(tmp_path / "shared")
    dtypes = {}
    for kind in ("full", "shared"):
        with safe_open(str(tmp_path / kind / "adapter_model.safetensors"), "pt") as weights:
            dtypes[kind] = {weights.get_tensor(k).dtype for k in weights.keys() if "values" in k}
    assert dtypes == {"full": {torch.float32}, "shared": {torch.bfloat16}}


def test_include_norms_with_explicit_targets_warns_that_it_does_nothing():
    from peft_designspace import DesignSpaceWarning

    config = SAMTuningConfig(budget=0.02, task_type=TASK, target_modules=["query"], include_norms=True)
    with pytest.warns(DesignSpaceWarning, match="`include_norms=True` only widens the default targets"):
        get_peft_model(make_model("bert", TASK), config)


def test_calibration_callback_takes_an_infinite_max_grad_norm_like_calibrate_sam():
    assert SAMCalibrationCallback(2, max_grad_norm=float("inf")).max_grad_norm == float("inf")  # never clip
