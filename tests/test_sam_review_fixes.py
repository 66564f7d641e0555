"""SAM on bitsandbytes backbones: faults found in a review of the quantized paths (2026-11-25), each checked here.

- an adapter moved between GPT-2 (`Conv1D`, weights stored (in, out)) and its quantized form (bitsandbytes layers,
  stored (out, in)) put every value on the transposed entry (logits 0.51 off, more than the adapter's effect);
- under bf16 autocast (`Trainer(bf16=True)`), the sparse delta beside a quantized layer crashed: the CSR product has
  no bfloat16 kernel.
"""

import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from test_trainer_quantized import _quantized
from tiny_models import make_inputs, make_model

from peft_designspace import SAMTuningConfig

pytest.importorskip("bitsandbytes")


def _logits(model, inputs) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in inputs.items() if k != "labels"}).logits


@pytest.mark.parametrize("direction", ["8bit-to-fp32", "fp32-to-8bit"])
def test_sam_adapter_moves_between_gpt2_and_its_8bit_form(tmp_path, direction):
    def base(quantized: bool):
        if quantized:
            return _quantized(tmp_path, "gpt2", "CAUSAL_LM", 8, 32)
        _quantized(tmp_path, "gpt2", "CAUSAL_LM", 8, 32)  # writes tmp_path / "base" once
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)

    source_quantized = direction.startswith("8bit")
    inputs = make_inputs("gpt2")
    config = SAMTuningConfig(budget=0.02, task_type="CAUSAL_LM", init_weights=False, seed=0)
    source = get_peft_model(base(source_quantized), config)
    expected = _logits(source, inputs)
    with source.disable_adapter():
        effect = (expected - _logits(source, inputs)).abs().max().item()
    source.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert bool(saved["transposed_indices"]) == (not source_quantized)  # Conv1D weights are recorded

    moved = PeftModel.from_pretrained(base(not source_quantized), tmp_path / "adapter")
    difference = (_logits(moved, inputs) - expected).abs().max().item()
    # 8-bit quantization of the base alone moves these logits by about 0.002; transposed entries moved them 0.51
    assert effect > 0.1 and difference < 0.02, (effect, difference)
    # a save from the moved model describes its own layout, and loads back onto the same kind of model exactly
    moved.save_pretrained(tmp_path / "again")
    again = PeftModel.from_pretrained(base(not source_quantized), tmp_path / "again")
    torch.testing.assert_close(_logits(again, inputs), _logits(moved, inputs), rtol=0, atol=1e-6)


def test_old_adapters_without_the_layout_field_load_as_before(tmp_path):
    model = get_peft_model(make_model("gpt2"), SAMTuningConfig(budget=0.02, task_type="CAUSAL_LM", init_weights=False))
    inputs = make_inputs("gpt2")
    expected = _logits(model, inputs)
    model.save_pretrained(tmp_path / "adapter")
    path = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(path.read_text())
    del config["transposed_indices"]  # as written before the field existed
    path.write_text(json.dumps(config))
    reloaded = PeftModel.from_pretrained(make_model("gpt2"), tmp_path / "adapter")
    torch.testing.assert_close(_logits(reloaded, inputs), expected, rtol=0, atol=0)


@pytest.mark.parametrize(("bits", "hidden"), [(8, 32), (4, 128)])
def test_sam_beside_a_quantized_layer_trains_under_bf16_autocast(tmp_path, bits, hidden):
    base = _quantized(tmp_path, "llama", "CAUSAL_LM", bits, hidden)
    model = get_peft_model(base, SAMTuningConfig(budget=0.01, task_type="CAUSAL_LM", init_weights=False)).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**make_inputs("llama")).loss
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and "samtuning_" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().max() > 0 for g in grads)
