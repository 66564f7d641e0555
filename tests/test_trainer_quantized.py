"""transformers.Trainer (train, checkpoint, resume) and bitsandbytes 8-bit / 4-bit backbones with the S4 method."""

import os

import common
import pytest
import torch
from peft import PeftModel, get_peft_model
from tiny_models import make_inputs, make_model
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, Trainer, TrainingArguments

from peft_designspace import DesignSpaceConfig

S4 = {"preset": "s4", "budget": 0.05}


def _dataset(model_id: str, task: str, n: int = 8) -> list[dict]:
    rows = []
    for seed in range(n):
        inputs = make_inputs(model_id, task, batch=1, seed=seed)
        rows.append({k: v[0] for k, v in inputs.items()})
    return rows


def _args(output_dir, **overrides) -> TrainingArguments:
    options = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-2,
        "max_steps": 4,
        "save_steps": 2,
        "report_to": [],
        "use_cpu": True,
        "seed": 0,
        "logging_steps": 1,
        "disable_tqdm": True,
    }
    return TrainingArguments(**{**options, **overrides})


def _adapter_state(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "designspace" in n}


def test_trainer_trains_checkpoints_and_resumes(tmp_path):
    data = _dataset("bert", "SEQ_CLS")
    model = get_peft_model(make_model("bert", "SEQ_CLS"), DesignSpaceConfig(task_type="SEQ_CLS", **S4))
    start = _adapter_state(model)
    Trainer(model=model, args=_args(tmp_path / "full"), train_dataset=data).train()
    full = _adapter_state(model)
    assert any(not torch.equal(full[n], start[n]) for n in start), "training changed no adapter weight"
    checkpoint = tmp_path / "full" / "checkpoint-2"
    files = set(os.listdir(checkpoint))
    assert {"adapter_model.safetensors", "adapter_config.json", "optimizer.pt"} <= files, files
    assert "model.safetensors" not in files, "the checkpoint holds the whole model instead of the adapter"

    resumed = get_peft_model(make_model("bert", "SEQ_CLS"), DesignSpaceConfig(task_type="SEQ_CLS", **S4))
    Trainer(model=resumed, args=_args(tmp_path / "full"), train_dataset=data).train(
        resume_from_checkpoint=str(checkpoint)
    )
    for name, value in _adapter_state(resumed).items():
        torch.testing.assert_close(value, full[name], atol=1e-6, rtol=0)


def _quantized(tmp_path, model_id: str, task: str, bits: int, hidden: int):
    from transformers import BitsAndBytesConfig

    base_dir = tmp_path / "base"
    if not base_dir.exists():
        make_model(model_id, task, hidden=hidden).save_pretrained(base_dir)
    skip = ["classifier", "score", "lm_head"]
    quant = (
        BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
        if bits == 8
        else BitsAndBytesConfig(load_in_4bit=True, llm_int8_skip_modules=skip, bnb_4bit_compute_dtype=torch.float32)
    )
    auto = AutoModelForSequenceClassification if task == "SEQ_CLS" else AutoModelForCausalLM
    return auto.from_pretrained(base_dir, quantization_config=quant, dtype=torch.float32)


@pytest.mark.parametrize(
    ("bits", "model_id", "task", "hidden"),
    [
        pytest.param(8, "bert", "SEQ_CLS", 32, id="8bit-bert-seqcls"),
        pytest.param(8, "llama", "CAUSAL_LM", 32, id="8bit-llama-causal"),
        pytest.param(4, "bert", "SEQ_CLS", 128, id="4bit-bert-seqcls"),
        pytest.param(4, "llama", "CAUSAL_LM", 128, id="4bit-llama-causal"),
    ],
)
def test_quantized_backbone_trains_reloads_and_merges(tmp_path, bits, model_id, task, hidden):
    pytest.importorskip("bitsandbytes")
    base = _quantized(tmp_path, model_id, task, bits, hidden)
    model = get_peft_model(base, DesignSpaceConfig(task_type=task, **S4))
    start = _adapter_state(model)
    data = _dataset(model_id, task)
    Trainer(model=model, args=_args(tmp_path / "run", max_steps=2, save_steps=10), train_dataset=data).train()
    trained = _adapter_state(model)
    assert any(not torch.equal(trained[n], start[n]) for n in start)
    inputs = make_inputs(model_id, task)
    expected = common.outputs(model, inputs)
    assert torch.isfinite(expected).all()
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(_quantized(tmp_path, model_id, task, bits, hidden), tmp_path / "adapter")
    torch.testing.assert_close(common.outputs(reloaded, inputs), expected, atol=1e-5, rtol=0)
    # merging the linear parts goes through PEFT's quantization backend (dequantize, add, requantize): close, not exact
    reloaded.merge_adapter()
    merged = common.outputs(reloaded, inputs)
    scale = expected.abs().max().item()
    assert (merged - expected).abs().max().item() <= 0.1 * scale + 1e-3
