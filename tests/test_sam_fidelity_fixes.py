"""SAM: faults found by a review against methods.md §2 (2026-11-25), each checked here.

- a fractional budget selected one entry fewer than ⌊p·m⌋ where `p·m` is not exact in binary (0.29 of 100 gave 28);
- `calibrate_sam(max_grad_norm=True)` was taken as 1.0 (the callback refused it), a seed out of torch's range failed
  late without naming `seed`, one batch dict passed as `data` was reported as "got <class 'str'>", and a
  `target_modules` naming the task head said only that nothing matched.
"""

import pytest
import torch
from peft import get_peft_model
from transformers import BertConfig, BertForSequenceClassification

from peft_designspace import SAMTuningConfig, calibrate_sam
from peft_designspace._config import floor_of_fraction
from peft_designspace.samtuning.model import budget_count


def _bert(hidden: int = 10) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2, intermediate_size=2 * hidden, vocab_size=50
    )
    return BertForSequenceClassification(config)


@pytest.mark.parametrize(("fraction", "total", "expected"), [(0.29, 100, 29), (0.57, 100, 57), (0.005, 1000, 5)])
def test_fraction_budget_is_the_floor_of_the_written_fraction(fraction, total, expected):
    assert floor_of_fraction(fraction, total) == expected
    assert budget_count(SAMTuningConfig(budget=fraction), total) == expected


def test_sam_selects_floor_of_p_times_m_entries():
    config = SAMTuningConfig(
        budget=0.29, target_modules=["layer.0.attention.self.query"], task_type="SEQ_CLS", init_weights=False
    )
    model = get_peft_model(_bert(), config)  # query: 10 x 10 = 100 targeted entries
    assert sum(model.peft_config["default"].nnz_pattern.values()) == 29


def test_s3pet_budget_count_uses_the_written_fraction():
    from peft_designspace.s3pet.model import resolve_search_budget
    from peft_designspace.s3pet.space import Candidate

    candidates = [Candidate(path=f"m{i}", role="query", type="bitfit", layer=0, size=1) for i in range(200)]
    assert resolve_search_budget(0.29, 100, candidates) == 29


def test_calibrate_refuses_a_bool_max_grad_norm_like_the_callback():
    model = get_peft_model(_bert(), SAMTuningConfig(budget=10, task_type="SEQ_CLS"))
    batches = [{"input_ids": torch.randint(0, 50, (2, 6)), "labels": torch.tensor([0, 1])}]
    with pytest.raises(ValueError, match="`max_grad_norm` must be a positive number or None, got True"):
        calibrate_sam(model, batches, max_grad_norm=True, show_progress=False)


def test_calibrate_names_one_batch_dict_passed_as_data():
    model = get_peft_model(_bert(), SAMTuningConfig(budget=10, task_type="SEQ_CLS"))
    batch = {"input_ids": torch.randint(0, 50, (2, 6)), "labels": torch.tensor([0, 1])}
    with pytest.raises(TypeError, match="`data` is one batch"):
        calibrate_sam(model, batch, show_progress=False)
    calibrate_sam(model, [batch], show_progress=False)  # the same batch in a list is fine


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1])
def test_seed_outside_torch_range_is_refused_naming_seed(seed):
    with pytest.raises(ValueError, match="seed"):
        SAMTuningConfig(budget=10, seed=seed)
    config = SAMTuningConfig(budget=10, seed=2**64 - 1, init_weights=False, task_type="SEQ_CLS")
    get_peft_model(_bert(), config)  # the random draw adds the adapter's name to the seed: no overflow


def test_targeting_the_head_says_it_is_in_modules_to_save():
    with pytest.raises(ValueError, match=r"never those of `modules_to_save`=\['classifier', 'score'\]"):
        get_peft_model(_bert(), SAMTuningConfig(budget=10, target_modules=["classifier"], task_type="SEQ_CLS"))


# the loss the selection is scored with (a review of the Trainer integration, 2026-11-25): the callback scored with the
# model's own `.loss` whatever the Trainer trained, and failed when the targets were under another key


def _weighted_loss(outputs, labels, num_items_in_batch=None):
    return torch.nn.functional.cross_entropy(outputs.logits, labels, weight=torch.tensor([1.0, 20.0]))


def _calibration_setup():
    from test_trainer_quantized import _dataset
    from tiny_models import make_model
    from transformers import default_data_collator

    base = make_model("bert", "SEQ_CLS", layers=2)
    for module in base.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    rows = _dataset("bert", "SEQ_CLS", n=8)
    rows = [{**r, "labels": torch.tensor(i % 2)} for i, r in enumerate(rows)]
    batches = [default_data_collator(rows[i : i + 2]) for i in range(0, 8, 2)]
    return get_peft_model(base, SAMTuningConfig(budget=0.05, task_type="SEQ_CLS")), rows, batches


def _selection(model) -> dict:
    return {n: b.clone() for n, b in model.named_buffers() if "samtuning" in n}


def test_calibration_scores_with_loss_fn_and_the_callback_with_the_trainers_loss(tmp_path):
    from transformers import Trainer, TrainingArguments

    from trainer_ext import SAMCalibrationCallback

    def weighted(model, batch):
        labels = batch.pop("labels")
        return _weighted_loss(model(**batch), labels)

    plain, _, batches = _calibration_setup()
    calibrate_sam(plain, batches, show_progress=False)
    direct, _, _ = _calibration_setup()
    calibrate_sam(direct, batches, loss_fn=weighted, show_progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(_selection(plain).values(), _selection(direct).values()))

    model, rows, _ = _calibration_setup()
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1, learning_rate=0.0, report_to=[],
        save_strategy="no", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=rows, compute_loss_func=_weighted_loss)
    trainer.add_callback(SAMCalibrationCallback.for_trainer(trainer, 4, dataloader=batches))
    trainer.train()
    for name, selected in _selection(direct).items():
        assert torch.equal(_selection(model)[name], selected), name


def test_calibration_without_loss_says_how_to_pass_one():
    model, _, batches = _calibration_setup()
    unlabeled = [{k: v for k, v in b.items() if k != "labels"} for b in batches]
    with pytest.raises(ValueError, match="or pass `loss_fn`"):
        calibrate_sam(model, unlabeled, show_progress=False)
    with pytest.raises(TypeError, match="`loss_fn` must return the loss as a one-element tensor"):
        calibrate_sam(model, batches, loss_fn=lambda model, batch: model(**batch), show_progress=False)


# a config reused from a calibrated adapter (a review of the PEFT API, 2026-11-25): it carries `nnz_pattern`, so the
# adapter counted as calibrated while it held placeholder indices 0..nnz-1: calibration refused, the callback skipped
# it and saving accepted it


def test_reused_config_is_not_taken_for_a_selection(tmp_path):
    from peft import PeftConfig, PeftModel
    from tiny_models import make_inputs, make_model

    from peft_designspace.samtuning import has_selection

    batches = [make_inputs("llama", "CAUSAL_LM", seed=s) for s in range(2)]
    model = get_peft_model(make_model("llama", "CAUSAL_LM"), SAMTuningConfig(budget=0.05, task_type="CAUSAL_LM"))
    assert not has_selection(model)
    calibrate_sam(model, batches, show_progress=False)
    assert has_selection(model)
    model.save_pretrained(tmp_path / "a")

    config = PeftConfig.from_pretrained(tmp_path / "a")
    assert config.nnz_pattern and config.calibrated  # the counts are known ...
    fresh = get_peft_model(make_model("llama", "CAUSAL_LM"), config)
    assert not has_selection(fresh)  # ... but not the selection
    with pytest.raises(ValueError, match="was never calibrated"):
        fresh.save_pretrained(tmp_path / "b")
    calibrate_sam(fresh, batches, show_progress=False)  # no `force=True` needed: there was no selection
    assert all(torch.equal(fresh.base_model.selection()[k], v) for k, v in model.base_model.selection().items())

    loaded = PeftModel.from_pretrained(make_model("llama", "CAUSAL_LM"), tmp_path / "a")
    assert has_selection(loaded)  # the saved selection came with the weights
    assert all(torch.equal(loaded.base_model.selection()[k], v) for k, v in model.base_model.selection().items())

    model.add_adapter("b", model.peft_config["default"])
    assert has_selection(model, "default") and not has_selection(model, "b")
    calibrate_sam(model, batches, adapter_name="b", show_progress=False)
    assert has_selection(model, "b")


def test_a_selection_loaded_by_any_loader_counts_and_a_partial_one_does_not(tmp_path):
    """Loading marks the layers whose indices arrive (PEFT, transformers' `load_adapter`, `load_state_dict`), not
    the whole adapter: a load that brings some tensors' indices leaves the others placeholders."""
    from peft import PeftConfig
    from tiny_models import make_inputs, make_model

    from peft_designspace.samtuning import has_selection

    model = get_peft_model(make_model("llama", "CAUSAL_LM"), SAMTuningConfig(budget=0.05, task_type="CAUSAL_LM"))
    calibrate_sam(model, [make_inputs("llama", "CAUSAL_LM")], show_progress=False)
    model.save_pretrained(tmp_path / "a")
    state = {k: v.clone() for k, v in model.state_dict().items() if "samtuning_" in k}

    fresh = get_peft_model(make_model("llama", "CAUSAL_LM"), PeftConfig.from_pretrained(tmp_path / "a"))
    fresh.load_state_dict(state, strict=False)
    assert has_selection(fresh)
    partial = get_peft_model(make_model("llama", "CAUSAL_LM"), PeftConfig.from_pretrained(tmp_path / "a"))
    first = next(k for k in state if "samtuning_weight_indices" in k)
    partial.load_state_dict({first: state[first]}, strict=False)
    assert not has_selection(partial)

    plain = make_model("llama", "CAUSAL_LM")
    plain.load_adapter(str(tmp_path / "a"))  # transformers' own integration
    assert has_selection(plain)


def test_a_real_selection_of_the_first_entries_survives_a_reload(tmp_path):
    """A layer whose calibrated selection is exactly its first entries (a few dominant weights at its start, or top-k
    ties broken towards the lower index) was taken for placeholders after a reload, so the reloaded adapter could
    not be saved and the callback recalibrated it, zeroing its trained values (a review of a fix, 2026-11-25)."""
    from peft import PeftModel
    from tiny_models import make_inputs, make_model

    from peft_designspace.samtuning import has_selection
    from peft_designspace.samtuning.model import sam_layers_of

    base = make_model("llama", "CAUSAL_LM")
    weight = base.model.layers[0].self_attn.q_proj.weight
    with torch.no_grad():
        weight.mul_(1e-3)
        weight.view(-1)[:3] = 50.0
    model = get_peft_model(base, SAMTuningConfig(budget=0.02, score="magnitude", task_type="CAUSAL_LM"))
    calibrate_sam(model, [make_inputs("llama", "CAUSAL_LM", seed=s) for s in range(2)], show_progress=False)
    layer = dict(sam_layers_of(model, "default"))["base_model.model.model.layers.0.self_attn.q_proj"]
    first = layer.samtuning_weight_indices["default"]
    assert first.numel() < layer.numel("weight")
    assert torch.equal(first, torch.arange(first.numel(), dtype=first.dtype))  # the case in question
    model.save_pretrained(tmp_path / "a")
    loaded = PeftModel.from_pretrained(make_model("llama", "CAUSAL_LM"), tmp_path / "a", is_trainable=True)
    assert has_selection(loaded)
    loaded.save_pretrained(tmp_path / "b")
