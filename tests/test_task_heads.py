"""Token classification and question answering: PEFT adds their heads to `modules_to_save` only after the tuner is
built, on the caller's config object; the pack's tuners hold a copy, so `get_peft_model` failed for all three methods
(`TypeError: 'NoneType' object is not iterable`) where LoRA works. Found by a review of the PEFT API (2026-11-25)."""

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import BertConfig, BertForQuestionAnswering, BertForTokenClassification

from peft_designspace import DesignSpaceConfig, S3PETConfig, SAMTuningConfig

HEADS = {
    "TOKEN_CLS": (BertForTokenClassification, "classifier"),
    "QUESTION_ANS": (BertForQuestionAnswering, "qa_outputs"),
}
CONFIGS = {
    "designspace": lambda task: DesignSpaceConfig(task_type=task, preset="lora", budget=0.05),
    "samtuning": lambda task: SAMTuningConfig(task_type=task, budget=100, init_weights=False),
    "s3pet": lambda task: S3PETConfig(task_type=task, budget=600),
}


def _base(cls):
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, vocab_size=100
    )
    return cls(config).eval()


@pytest.mark.parametrize("method", CONFIGS)
@pytest.mark.parametrize("task", HEADS)
def test_task_head_is_trained_saved_and_reloaded(task, method, tmp_path):
    cls, head = HEADS[task]
    config = CONFIGS[method](task)
    model = get_peft_model(_base(cls), config)
    assert config.modules_to_save is None or head in config.modules_to_save  # PEFT's own update of the caller's
    assert head in model.peft_config["default"].modules_to_save
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(f"{head}.modules_to_save.default" in n for n in trainable), trainable
    with torch.no_grad():
        for name, p in model.named_parameters():
            if f"{head}.modules_to_save" in name:
                p.add_(0.5)  # a head that differs from the base's: the reload must bring it back
    inputs = {"input_ids": torch.randint(1, 100, (2, 7))}
    with torch.no_grad():
        expected = model(**inputs)[0]
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(_base(cls), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs)[0], expected)
