"""Exports of a non-active adapter, a failing final rename, SAM on a quantized backbone, S3PET in search mode, and
`|` in the model card's settings table."""

import os

import pytest
import torch
from peft import PeftModel, get_peft_model
from tiny_models import make_inputs, make_model
from transformers import AutoModelForSequenceClassification

from adapters_hub import _files, write_model_card
from adapters_hub.export import ExportError, export_merged, export_to_peft, unmergeable_parts
from peft_designspace import DesignSpaceConfig, S3PETConfig, SAMTuningConfig


def _logits(model, inputs):
    with torch.no_grad():
        return model.eval()(**inputs).logits


@pytest.fixture(scope="module")
def two_adapters():
    """A LoRA model with two adapters whose trained heads differ; "default" is active."""
    torch.manual_seed(0)
    config = {"preset": "lora", "budget": 0.05, "task_type": "SEQ_CLS", "init_weights": False}
    model = get_peft_model(make_model("bert", "SEQ_CLS", layers=4), DesignSpaceConfig(**config))
    torch.manual_seed(5)
    model.add_adapter("second", DesignSpaceConfig(**config))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "modules_to_save.second" in name:
                param.add_(torch.randn_like(param))
    inputs = make_inputs("bert", "SEQ_CLS")
    inputs.pop("labels")
    model.set_adapter("second")
    expected_second = _logits(model, inputs)
    model.set_adapter("default")
    expected_default = _logits(model, inputs)
    assert (expected_second - expected_default).abs().max() > 0.1  # the heads really differ
    return model, inputs, expected_second


def test_peft_export_of_a_non_active_adapter_uses_its_head_and_compares_with_it(two_adapters, tmp_path):
    model, inputs, expected = two_adapters
    info = export_to_peft(model, tmp_path / "p", adapter_name="second", check_inputs=inputs)
    assert model.active_adapter == "default"
    reloaded = PeftModel.from_pretrained(make_model("bert", "SEQ_CLS", layers=4), tmp_path / "p")
    diff = (_logits(reloaded, inputs) - expected).abs().max().item()
    assert diff < 1e-5
    assert info.max_abs_diff < 1e-5


def test_merged_export_of_a_non_active_adapter_uses_its_head_and_compares_with_it(two_adapters, tmp_path):
    model, inputs, expected = two_adapters
    info = export_merged(model, tmp_path / "m", adapter_name="second", check_inputs=inputs)
    assert model.active_adapter == "default"
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m")
    diff = (_logits(reloaded, inputs) - expected).abs().max().item()
    assert diff < 1e-4
    assert info.max_abs_diff < 1e-4
    assert abs(info.max_abs_diff - diff) < 1e-5


def test_failed_final_rename_puts_the_previous_output_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with _files.atomic_output_dir(out) as tmp:
        (tmp / "model.safetensors").write_text("previous")
    real_rename = os.rename
    calls = []

    def flaky(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # path -> .old-*/previous succeeds, the new folder -> path fails
            raise OSError("simulated failure of the final rename")
        return real_rename(src, dst)

    monkeypatch.setattr(_files.os, "rename", flaky)
    with pytest.raises(OSError, match="simulated"):
        with _files.atomic_output_dir(out, overwrite=True) as tmp:
            (tmp / "model.safetensors").write_text("new")
    monkeypatch.setattr(_files.os, "rename", real_rename)
    assert (out / "model.safetensors").read_text() == "previous"
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary or moved-aside folder is left behind


def test_sam_merged_export_on_an_8bit_model_is_not_exact(tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    make_model("bert", "SEQ_CLS", hidden=32, layers=4).save_pretrained(tmp_path / "base")
    quantization = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["classifier"])
    base = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "base", quantization_config=quantization, dtype=torch.float32
    )
    model = get_peft_model(base, SAMTuningConfig(budget=0.05, init_weights=False, task_type="SEQ_CLS"))
    inputs = make_inputs("bert", "SEQ_CLS")
    inputs.pop("labels")
    info = export_merged(model, tmp_path / "merged", check_inputs=inputs)
    assert info.max_abs_diff > 0  # requantization moved the weights
    assert info.exact is False
    assert any("quantized" in note for note in info.notes)
    with pytest.raises(ExportError, match="exact on unquantized weights"):
        export_to_peft(model, tmp_path / "shira")


def test_sam_merged_export_on_plain_weights_stays_exact(tmp_path):
    model = get_peft_model(
        make_model("bert", "SEQ_CLS", layers=4), SAMTuningConfig(budget=0.01, init_weights=False, task_type="SEQ_CLS")
    )
    assert export_merged(model, tmp_path / "merged").exact is True


def test_s3pet_search_mode_is_refused_by_export_merged(tmp_path, monkeypatch):
    model = get_peft_model(
        make_model("bert", "SEQ_CLS", layers=4), S3PETConfig(budget=600, search_space="l", task_type="SEQ_CLS")
    )
    assert any("search mode" in part for part in unmergeable_parts(model))

    def no_copy(*args, **kwargs):
        raise AssertionError("deep-copied before refusing")

    monkeypatch.setattr("adapters_hub.export.copy.deepcopy", no_copy)
    with pytest.raises(ExportError, match="search mode.*apply mode"):
        export_merged(model, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_card_escapes_pipes_in_settings(tmp_path):
    pattern = r".*\.(query|value)$"
    config = SAMTuningConfig(budget=0.01, init_weights=False, task_type="SEQ_CLS", target_modules=pattern)
    model = get_peft_model(make_model("bert", "SEQ_CLS", layers=4), config)
    model.save_pretrained(tmp_path)
    card = open(write_model_card(tmp_path), encoding="utf-8").read()
    row = next(line for line in card.splitlines() if "`target_modules`" in line)
    assert row == r"| `target_modules` | `.*\.(query\|value)$` |"
    cell = row.split("` | `")[1].removesuffix("` |")
    assert cell.replace("\\|", "|") == pattern  # unescaping gives the regex back


@pytest.mark.parametrize("kind", ["merged", "peft"])
def test_an_uncalibrated_sam_adapter_is_not_exported(kind, tmp_path):
    """It exported an all-zero adapter on placeholder entries, marked exact (a bad-input review, 2026-11-25)."""
    from peft import get_peft_model
    from tiny_models import make_model

    from adapters_hub.export import ExportError, export_merged, export_to_peft
    from peft_designspace import SAMTuningConfig

    model = get_peft_model(make_model("bert", "SEQ_CLS"), SAMTuningConfig(budget=0.05, task_type="SEQ_CLS"))
    export = export_merged if kind == "merged" else export_to_peft
    with pytest.raises(ExportError, match=r"has no selection yet .* run `calibrate_sam`"):
        export(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()
