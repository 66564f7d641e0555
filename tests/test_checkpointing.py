"""Activation checkpointing (`gradient_checkpointing_enable`) leaves every method's gradients unchanged.

Both torch variants are checked: the non-reentrant one (transformers' default) and the reentrant one (what
`peft.prepare_model_for_kbit_training` ends up with by default). S3PET's search mode is in `test_s3pet_search.py`: it
refuses the reentrant variant.
"""

import pytest
import torch
from peft import get_peft_model
from s3pet_helpers import searched_structure
from tiny_models import make_inputs, make_model

from peft_designspace import DesignSpaceConfig, S3PETConfig, SAMTuningConfig, calibrate_sam

CONFIGS = {
    "s4": lambda model_id, task: DesignSpaceConfig(preset="s4", budget=0.05, task_type=task),
    "prefix": lambda model_id, task: DesignSpaceConfig(preset="prefix", budget=0.05, task_type=task),
    "adapter": lambda model_id, task: DesignSpaceConfig(preset="adapter", budget=0.05, task_type=task),
    "sam": lambda model_id, task: SAMTuningConfig(budget=0.01, task_type=task),
    "s3pet-apply": lambda model_id, task: S3PETConfig(
        structure=searched_structure(model_id, task, seed=1), task_type=task
    ),
}


def _gradients(model_id: str, task: str, method: str, checkpointing: dict | None) -> dict:
    torch.manual_seed(0)
    base = make_model(model_id, task)
    if checkpointing is not None:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
    model = get_peft_model(base, CONFIGS[method](model_id, task))
    if method == "sam":
        calibrate_sam(model, [make_inputs(model_id, task, seed=s) for s in range(2)], show_progress=False)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # move off the (often zero) initialisation, so that every gradient is non-trivial
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.02)
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model(**make_inputs(model_id, task)).loss.backward()
    layers = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    assert bool(layers) == (checkpointing is not None)
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
@pytest.mark.parametrize("method", list(CONFIGS))
@pytest.mark.parametrize(("model_id", "task"), [("bert", "SEQ_CLS"), ("llama", "CAUSAL_LM")])
def test_checkpointing_keeps_the_gradients(model_id, task, method, reentrant):
    plain = _gradients(model_id, task, method, None)
    checkpointed = _gradients(model_id, task, method, {"use_reentrant": reentrant})
    assert plain.keys() == checkpointed.keys()
    assert any(g is not None and g.abs().sum() > 0 for g in plain.values())
    for name, grad in plain.items():
        assert (checkpointed[name] is None) == (grad is None), name
        if grad is not None:
            torch.testing.assert_close(checkpointed[name], grad, atol=1e-7, rtol=1e-5, msg=name)


@pytest.mark.parametrize(("model_id", "task"), [("bert", "SEQ_CLS"), ("llama", "CAUSAL_LM")])
def test_search_mode_refuses_reentrant_checkpointing_at_its_first_training_forward(model_id, task):
    """Outside `S3PETSearchTrainer` (a plain loop, a plain Trainer) the search gave torch's "Trying to backward
    through the graph a second time" in backward; the model itself now says why (found by a review, 2026-11-25)."""
    base = make_model(model_id, task)
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model = get_peft_model(base, S3PETConfig(budget=1200, task_type=task, init_weights=False))  # α gets a gradient
    inputs = make_inputs(model_id, task)
    model.eval()
    with torch.no_grad():
        model(**inputs)  # inference is fine
    model.train()
    with pytest.raises(ValueError, match=r"reentrant activation checkpointing .*'use_reentrant': False"):
        model(**inputs)
    alphas = model.base_model.architecture_parameters()
    for alpha in alphas:  # α frozen (only the deltas train): reentrant checkpointing is fine
        alpha.requires_grad_(False)
    model(**inputs).loss.backward()
    for alpha in alphas:
        alpha.requires_grad_(True)
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model(**inputs).loss.backward()
    assert any(a.grad is not None and a.grad.abs().sum() > 0 for a in alphas)
