"""The PEFT contract of S3PET in apply mode (a searched structure) on every architecture of the test table."""

import functools

import common
import pytest
import torch
from peft import PeftModel, get_peft_model
from s3pet_helpers import searched_structure
from test_trainer_quantized import _args, _dataset, _quantized
from tiny_models import make_inputs, make_model
from transformers import Trainer

from peft_designspace import S3PETConfig

ARCHITECTURES = [
    ("bert", "SEQ_CLS"),
    ("roberta", "SEQ_CLS"),
    ("gpt2", "CAUSAL_LM"),
    ("llama", "CAUSAL_LM"),
    ("qwen2", "CAUSAL_LM"),
    ("t5", "SEQ_2_SEQ_LM"),
]


@functools.cache
def _structure(model_id: str, task: str, space: str = "m") -> dict:
    return searched_structure(model_id, task, space=space, seed=1)


def _cases():
    return [pytest.param(m, t, id=f"{m}-{t.lower()}") for m, t in ARCHITECTURES]


def _kwargs(model_id, task, space="m"):
    return {"structure": _structure(model_id, task, space)}


@pytest.mark.parametrize(("model_id", "task"), _cases())
def test_only_adapter_params_change(model_id, task):
    common.check_only_adapter_params_change(model_id, task, S3PETConfig, _kwargs(model_id, task), 1e-5)


@pytest.mark.parametrize(("model_id", "task"), _cases())
def test_disable_gives_base(model_id, task):
    common.check_disable_gives_base(model_id, task, S3PETConfig, _kwargs(model_id, task), 1e-5)


@pytest.mark.parametrize(("model_id", "task"), _cases())
def test_fresh_process_reload(model_id, task, tmp_path):
    common.check_fresh_process_reload(model_id, task, S3PETConfig, _kwargs(model_id, task), 1e-5, tmp_path)


@pytest.mark.parametrize(("model_id", "task"), _cases()[:1] + _cases()[3:4])
def test_transformers_entry_points(model_id, task, tmp_path):
    common.check_transformers_entry_points(model_id, task, S3PETConfig, _kwargs(model_id, task), 1e-5, tmp_path)


@pytest.mark.parametrize(("model_id", "task"), _cases())
def test_two_adapters(model_id, task):
    common.check_two_adapters(model_id, task, S3PETConfig, _kwargs(model_id, task), 1e-5)


@pytest.mark.parametrize(("model_id", "task"), [c for c in _cases() if c.values[1] != "SEQ_CLS"])
def test_generate_with_cache(model_id, task):
    common.check_generate_with_cache(model_id, task, S3PETConfig, _kwargs(model_id, task), 1e-5)


@pytest.mark.parametrize(("model_id", "task"), _cases())
def test_merge_of_the_mergeable_parts(model_id, task):
    inputs = make_inputs(model_id, task)
    model = common.build(model_id, task, S3PETConfig, common.randomized(_kwargs(model_id, task)))
    expected = common.outputs(model, inputs)
    has_lra = any(m["type"] == "lra" for m in model.peft_config["default"].structure["modules"])
    model.merge_adapter()  # LoRA, BitFit, LNFit merge; low-rank adapters stay active
    torch.testing.assert_close(common.outputs(model, inputs), expected, atol=1e-5, rtol=0)
    model.unmerge_adapter()
    torch.testing.assert_close(common.outputs(model, inputs), expected, atol=1e-5, rtol=0)
    if has_lra:
        with pytest.raises(ValueError, match=r"partial=True"):
            model.merge_and_unload()
    mergeable = common.build(model_id, task, S3PETConfig, common.randomized(_kwargs(model_id, task, "l")))
    expected = common.outputs(mergeable, inputs)
    merged = mergeable.merge_and_unload()
    assert not any("s3pet" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(common.outputs(merged, inputs), expected, atol=1e-5, rtol=0)


def test_trainer_trains_and_resumes_an_applied_structure(tmp_path):
    data = _dataset("bert", "SEQ_CLS")

    def state(model):
        return {n: p.detach().clone() for n, p in model.named_parameters() if "s3pet" in n}

    model = common.build("bert", "SEQ_CLS", S3PETConfig, _kwargs("bert", "SEQ_CLS"))
    start = state(model)
    Trainer(model=model, args=_args(tmp_path / "run"), train_dataset=data).train()
    full = state(model)
    assert any(not torch.equal(full[n], start[n]) for n in start)
    resumed = common.build("bert", "SEQ_CLS", S3PETConfig, _kwargs("bert", "SEQ_CLS"))
    Trainer(model=resumed, args=_args(tmp_path / "run"), train_dataset=data).train(
        resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2")
    )
    for name, value in state(resumed).items():
        torch.testing.assert_close(value, full[name], atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("bits", "model_id", "task", "hidden"), [(8, "bert", "SEQ_CLS", 32), (4, "llama", "CAUSAL_LM", 128)]
)
def test_quantized_backbone_trains_reloads_and_merges(tmp_path, bits, model_id, task, hidden):
    pytest.importorskip("bitsandbytes")
    base = _quantized(tmp_path, model_id, task, bits, hidden)
    structure = searched_structure(model_id, task, budget=4000 if hidden == 128 else 1200, seed=2, hidden=hidden)
    model = get_peft_model(base, S3PETConfig(structure=structure, task_type=task, init_weights=False))
    Trainer(
        model=model, args=_args(tmp_path / "run", max_steps=2, save_steps=10), train_dataset=_dataset(model_id, task)
    ).train()
    inputs = make_inputs(model_id, task)
    expected = common.outputs(model, inputs)
    assert torch.isfinite(expected).all()
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(_quantized(tmp_path, model_id, task, bits, hidden), tmp_path / "adapter")
    torch.testing.assert_close(common.outputs(reloaded, inputs), expected, atol=1e-5, rtol=0)
    reloaded.merge_adapter()  # through PEFT's quantization backend: close, not exact
    merged = common.outputs(reloaded, inputs)
    assert (merged - expected).abs().max().item() <= 0.1 * expected.abs().max().item() + 1e-3


@pytest.mark.parametrize("second_order", [False, True], ids=["first-order", "second-order"])
def test_search_runs_on_a_4bit_backbone(tmp_path, second_order):
    """The search itself (not only the retraining) on a bitsandbytes 4-bit backbone: the gated candidates sit on
    `Linear4bit` layers (the unfused path), and the second-order virtual weights go through `functional_call`."""
    pytest.importorskip("bitsandbytes")
    from trainer_ext import S3PETSearchTrainer

    base = _quantized(tmp_path, "llama", "CAUSAL_LM", 4, 128)
    model = get_peft_model(base, S3PETConfig(budget=4000, task_type="CAUSAL_LM"))
    tuner = model.base_model
    assert any("Linear4bit" in type(m.base_layer).__name__ for m in tuner.model.modules() if hasattr(m, "s3pet_lora"))
    deltas = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad and "s3pet_alpha" not in n}
    trainer = S3PETSearchTrainer(
        model=model,
        args=_args(tmp_path / "run", max_steps=2, save_steps=10, learning_rate=1e-2),
        train_dataset=_dataset("llama", "CAUSAL_LM", n=8),
        second_order=second_order,
    )
    trainer.train()
    assert all(torch.isfinite(a).all() for a in tuner.architecture_parameters())
    assert any(a.abs().sum() > 0 for a in tuner.architecture_parameters()), "the search did not move α"
    moved = [n for n, p in model.named_parameters() if n in deltas and not torch.equal(p.detach(), deltas[n])]
    assert moved, "the weight steps changed no delta"
    structure = trainer.derive_structure(save=False)
    assert 0 < structure["total"] <= structure["budget"] == 4000


@pytest.mark.parametrize(("model_id", "task"), _cases())
def test_search_trainer_on_every_architecture(tmp_path, model_id, task):
    """Search (two first-order steps with `S3PETSearchTrainer`), derive, apply to a fresh model: the whole path."""
    from trainer_ext import S3PETSearchTrainer

    model = get_peft_model(make_model(model_id, task), S3PETConfig(budget=1200, task_type=task, init_weights=False))
    before = [a.detach().clone() for a in model.base_model.architecture_parameters()]
    trainer = S3PETSearchTrainer(
        model=model,
        args=_args(tmp_path / "search", max_steps=2, save_steps=10),
        train_dataset=_dataset(model_id, task, n=8),
    )
    trainer.train()
    after = model.base_model.architecture_parameters()
    assert all(torch.isfinite(a).all() for a in after)
    assert any(not torch.equal(a.detach(), b) for a, b in zip(after, before)), "the search did not move α"
    structure = trainer.derive_structure(save=False)
    assert 0 < structure["total"] <= structure["budget"] == 1200
    final = get_peft_model(make_model(model_id, task), S3PETConfig(structure=structure, task_type=task))
    deltas = sum(p.numel() for n, p in final.named_parameters() if p.requires_grad and ".s3pet_" in n)
    assert deltas == structure["total"]
    assert torch.isfinite(common.outputs(final, make_inputs(model_id, task))).all()
