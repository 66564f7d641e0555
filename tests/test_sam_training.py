"""SAM with transformers.Trainer (calibration callback, checkpoint, resume), memory, storage, quantized backbones."""

import os

import common
import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors import safe_open
from test_trainer_quantized import _args, _dataset, _quantized
from tiny_models import make_inputs, make_model
from transformers import Trainer

from peft_designspace import SAMTuningConfig, calibrate_sam
from peft_designspace.samtuning.ops import SparsePattern, fused_sparse_linear, sparse_delta_matmul
from trainer_ext import SAMCalibrationCallback


def _values(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "samtuning" in n}


def _sam(model_id="bert", task="SEQ_CLS", **kwargs):
    return get_peft_model(make_model(model_id, task), SAMTuningConfig(task_type=task, **{"budget": 0.02, **kwargs}))


def test_trainer_calibrates_trains_checkpoints_and_resumes(tmp_path):
    data = _dataset("bert", "SEQ_CLS")
    args = _args(tmp_path / "run", weight_decay=0.1)
    model = _sam()
    base = {n: p.detach().clone() for n, p in model.base_model.model.named_parameters() if "samtuning" not in n}
    Trainer(model=model, args=args, train_dataset=data, callbacks=[SAMCalibrationCallback(num_batches=3)]).train()
    assert model.peft_config["default"].calibrated
    full = _values(model)
    assert any(v.abs().sum() > 0 for v in full.values()), "training changed no value"
    checkpoint = tmp_path / "run" / "checkpoint-2"
    files = set(os.listdir(checkpoint))
    assert {"adapter_model.safetensors", "adapter_config.json", "optimizer.pt"} <= files, files
    assert "model.safetensors" not in files
    # optimizer state is O(nnz): Adam moments have the size of the values
    state = torch.load(checkpoint / "optimizer.pt", weights_only=True)["state"]
    sizes = sorted(s["exp_avg"].numel() for s in state.values())
    assert sum(sizes) <= sum(v.numel() for v in full.values()) + 2 * 32 + 2  # + the classifier head

    # weight decay never reaches unselected entries: the merged model differs from the base only at the selection
    selection = model.base_model.selection()
    merged = model.merge_and_unload()
    for name, param in merged.named_parameters():
        module_path, _, part = name.rpartition(".")
        original = base.get(name, base.get(f"{module_path}.base_layer.{part}"))
        if original is None or "classifier" in name:
            continue
        changed = set(torch.nonzero(param.reshape(-1) != original.reshape(-1)).flatten().tolist())
        assert changed <= set(selection.get(name, torch.empty(0)).tolist()), name

    resumed = _sam()  # fresh and uncalibrated: resuming loads (and resizes to) the checkpoint's selection
    trainer = Trainer(model=resumed, args=args, train_dataset=data, callbacks=[SAMCalibrationCallback(num_batches=3)])
    trainer.train(resume_from_checkpoint=str(checkpoint))
    for name, value in _values(resumed).items():
        torch.testing.assert_close(value, full[name], atol=1e-6, rtol=0)


def test_calibrated_adapter_reloads_and_merges_with_half_precision_storage(tmp_path):
    model = _sam("llama", "CAUSAL_LM", save_dtype="bfloat16")
    calibrate_sam(model, [make_inputs("llama", "CAUSAL_LM", seed=s) for s in range(3)], show_progress=False)
    model = common.train_a_little(model, "llama", "CAUSAL_LM")
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(p.to(torch.bfloat16).float())  # values representable in bfloat16: reload is exact
    inputs = make_inputs("llama", "CAUSAL_LM")
    expected = common.outputs(model, inputs)
    model.save_pretrained(tmp_path / "adapter")
    path = tmp_path / "adapter" / "adapter_model.safetensors"
    nnz = sum(v.numel() for v in _values(model).values())
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        dtypes = {f.get_tensor(k).dtype for k in keys if "_values" in k}
        assert all("samtuning_weight_values" in k or "samtuning_weight_indices" in k for k in keys), keys[:4]
        assert {f.get_tensor(k).dtype for k in keys if "_indices" in k} == {torch.int32}
    assert dtypes == {torch.bfloat16}
    assert os.path.getsize(path) <= nnz * (2 + 4) + 64 * 1024
    reloaded = PeftModel.from_pretrained(make_model("llama", "CAUSAL_LM"), tmp_path / "adapter")
    torch.testing.assert_close(common.outputs(reloaded, inputs), expected, atol=1e-5, rtol=0)
    assert all(v.dtype == torch.float32 for v in _values(reloaded).values()), "loaded values must train in float32"


def _saved_bytes(fn, owned: list[torch.Tensor]) -> int:
    """Bytes saved for backward by `fn()`, leaving out tensors that share storage with `owned` (weights, buffers)."""
    owned_ptrs = {t.untyped_storage().data_ptr() for t in owned}
    saved = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in owned_ptrs:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(saved.values())


@pytest.mark.parametrize("path", ["fused", "separate"])
def test_saved_for_backward_is_the_input_only(path):
    """A 1024×1024 layer at ~1.5% density keeps nothing weight-sized for backward, and its gradients are exact."""
    torch.manual_seed(0)
    weight, x = torch.randn(1024, 1024), torch.randn(4, 1024, requires_grad=True)
    flat = torch.randperm(weight.numel())[:16384].sort().values.to(torch.int32)
    pattern = SparsePattern.from_flat(flat, tuple(weight.shape))
    values = torch.randn(flat.numel(), requires_grad=True)
    if path == "fused":
        run = lambda: fused_sparse_linear(x, weight, None, [pattern], [values])  # noqa: E731
    else:
        run = lambda: x @ weight.T + sparse_delta_matmul(x, [pattern], [values])  # noqa: E731
    owned = [weight, values, flat, pattern.crow, pattern.col]
    assert _saved_bytes(run, owned) <= x.nbytes + weight.nbytes // 1000  # the input (+ small index scratch)
    out = run()
    grad = torch.randn_like(out)
    gx, gv = torch.autograd.grad(out, [x, values], grad)
    dense = weight.clone().reshape(-1).index_add(0, flat.long(), values.detach()).reshape(weight.shape)
    torch.testing.assert_close(gx, grad @ dense, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gv, (grad.T @ x.detach()).reshape(-1)[flat.long()], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("bits", "model_id", "task", "hidden"),
    [
        pytest.param(8, "bert", "SEQ_CLS", 32, id="8bit-bert-seqcls"),
        pytest.param(4, "llama", "CAUSAL_LM", 128, id="4bit-llama-causal"),
    ],
)
def test_quantized_backbone_calibrates_trains_reloads_and_merges(tmp_path, bits, model_id, task, hidden):
    pytest.importorskip("bitsandbytes")
    base = _quantized(tmp_path, model_id, task, bits, hidden)
    model = get_peft_model(base, SAMTuningConfig(task_type=task, budget=0.01))
    data = _dataset(model_id, task)
    args = _args(tmp_path / "run", max_steps=2, save_steps=10)
    Trainer(model=model, args=args, train_dataset=data, callbacks=[SAMCalibrationCallback(2)]).train()
    assert any(v.abs().sum() > 0 for v in _values(model).values())
    inputs = make_inputs(model_id, task)
    expected = common.outputs(model, inputs)
    assert torch.isfinite(expected).all()
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(_quantized(tmp_path, model_id, task, bits, hidden), tmp_path / "adapter")
    torch.testing.assert_close(common.outputs(reloaded, inputs), expected, atol=1e-5, rtol=0)
    # merging dequantizes, adds and requantizes through PEFT's quantization backend: close, not exact
    reloaded.merge_adapter()
    merged = common.outputs(reloaded, inputs)
    assert (merged - expected).abs().max().item() <= 0.1 * expected.abs().max().item() + 1e-3


@pytest.mark.parametrize("transposed", [False, True])
def test_every_trainable_part_gets_the_dense_reference_gradient(transposed):
    """Weight and bias values of the fused path (nn.Linear and GPT-2 Conv1D) against a dense autograd reference."""
    model_id = "gpt2" if transposed else "bert"
    task = "CAUSAL_LM" if transposed else "SEQ_CLS"
    config = SAMTuningConfig(task_type=task, budget=0.05, include_biases=True, init_weights=False)
    model = get_peft_model(make_model(model_id, task, layers=2), config)
    model(**make_inputs(model_id, task)).loss.backward()
    values = {n: p for n, p in model.named_parameters() if "samtuning" in n and "_values" in n}
    assert values and all(p.grad is not None and p.grad.abs().sum() > 0 for p in values.values()), [
        n for n, p in values.items() if p.grad is None
    ][:3]
    # dense reference: the merged model with the base tensors trainable
    reference = get_peft_model(make_model(model_id, task, layers=2), config)
    reference.load_state_dict(model.state_dict())
    selection = reference.base_model.selection()
    merged = reference.merge_and_unload()
    for p in merged.parameters():
        p.requires_grad_(True)
    merged(**make_inputs(model_id, task)).loss.backward()
    dense = dict(merged.named_parameters())
    for key, flat in selection.items():
        part = key.rsplit(".", 1)[1]
        live = values[f"base_model.model.{key.rsplit('.', 1)[0]}.samtuning_{part}_values.default"].grad
        torch.testing.assert_close(live, dense[key].grad.reshape(-1)[flat], atol=1e-5, rtol=1e-4)


def test_callback_calibrates_in_train_mode_and_restores_the_mode(tmp_path):
    model = _sam().eval()  # as `from_pretrained` returns it
    dropout = next(m for m in model.modules() if isinstance(m, torch.nn.Dropout))
    modes = []
    dropout.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    callback = SAMCalibrationCallback(num_batches=2)
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=1), train_dataset=_dataset("bert", "SEQ_CLS"))
    dataloader = trainer.get_train_dataloader()
    callback.on_train_begin(trainer.args, trainer.state, trainer.control, model=model, train_dataloader=dataloader)
    assert model.peft_config["default"].calibrated
    assert modes == [True, True], "calibration must see dropout on, as the reference's"
    assert not model.training, "the model's own mode comes back"


def test_callback_reads_a_shorter_dataloader_again_for_its_batches(tmp_path):
    # the default 64 batches on a small training set were silently cut to its length (reported at INFO only)
    model = _sam()
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=1), train_dataset=_dataset("bert", "SEQ_CLS"))
    dataloader = trainer.get_train_dataloader()
    callback = SAMCalibrationCallback(num_batches=len(dataloader) * 2 + 1)
    callback.on_train_begin(trainer.args, trainer.state, trainer.control, model=model, train_dataloader=dataloader)
    assert model.base_model._sam_last_calibration["batches"] == len(dataloader) * 2 + 1
