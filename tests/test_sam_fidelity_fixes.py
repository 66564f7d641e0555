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
    SAMTuningConfig(budget=10, seed=2**64 - 1)


def test_targeting_the_head_says_it_is_in_modules_to_save():
    with pytest.raises(ValueError, match=r"never those of `modules_to_save`=\['classifier', 'score'\]"):
        get_peft_model(_bert(), SAMTuningConfig(budget=10, target_modules=["classifier"], task_type="SEQ_CLS"))
