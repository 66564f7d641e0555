"""S3PET on generative models, from a review of the paper's T5 journey (2026-11-25): without a `task_type`, PEFT's
`generate()` bypassed the tuner's, so a search-mode model drew new gates at every decoding step (in train mode the
cache then held keys and values of earlier draws)."""

import pytest
import torch
from peft import PeftModel, get_peft_model
from tiny_models import make_model

from peft_designspace import S3PETConfig


def _counting(model, monkeypatch) -> list:
    calls = []
    tuner = model.base_model
    refresh = tuner._refresh_gates
    monkeypatch.setattr(tuner, "_refresh_gates", lambda: (calls.append(1), refresh())[1])
    return calls


@pytest.mark.parametrize(("model_id", "task"), [("llama", None), ("t5", None), ("gpt2", "CAUSAL_LM")])
def test_one_gate_draw_per_generate_call_with_or_without_task_type(model_id, task, monkeypatch):
    model = get_peft_model(make_model(model_id, task), S3PETConfig(budget=0.05, task_type=task))
    if task is None:
        assert type(model) is PeftModel  # the case that bypassed S3PETModel.generate
    calls = _counting(model, monkeypatch)
    inputs = {"input_ids": torch.randint(3, 50, (1, 5))}
    if model_id == "t5":
        inputs["decoder_input_ids"] = torch.zeros(1, 1, dtype=torch.long)
    model.train()
    model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert len(calls) == 1
    calls.clear()
    model(**inputs)
    assert len(calls) == 1


def test_cached_generation_in_train_mode_matches_uncached_without_task_type():
    torch.manual_seed(0)
    model = get_peft_model(make_model("llama"), S3PETConfig(budget=0.05, init_weights=False))
    model.train()
    inputs = {"input_ids": torch.randint(3, 50, (1, 5)), "max_new_tokens": 4, "do_sample": False}
    scores = {}
    for cache in (True, False):
        torch.manual_seed(1)  # the one draw of the call is the same for both
        out = model.generate(**inputs, use_cache=cache, output_scores=True, return_dict_in_generate=True)
        scores[cache] = torch.stack(out.scores)
    torch.testing.assert_close(scores[True], scores[False], atol=1e-4, rtol=1e-4)


def test_per_sample_adapter_names_are_refused():
    model = get_peft_model(make_model("llama", "CAUSAL_LM"), S3PETConfig(budget=0.05, task_type="CAUSAL_LM"))
    with pytest.raises(ValueError, match=r"S3PET does not support \['adapter_names'\]"):
        model(input_ids=torch.randint(3, 50, (2, 5)), adapter_names=["default", "default"])
