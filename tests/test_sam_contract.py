"""The PEFT contract of SAM sparse tuning on every architecture of the test table."""

import common
import pytest
import torch
from tiny_models import make_inputs, make_model

from peft_designspace import SAMTuningConfig

SAM = {"budget": 0.05, "init_weights": False}
SAM_EXTRA = {
    "budget": 0.05,
    "init_weights": False,
    "include_biases": True,
    "include_norms": True,
    "scope": "per_tensor",
}

CASES = [
    pytest.param("bert", "SEQ_CLS", SAM, 1e-5, id="bert-seqcls"),
    pytest.param("roberta", "SEQ_CLS", SAM, 1e-5, id="roberta-seqcls"),
    pytest.param("gpt2", "CAUSAL_LM", SAM, 1e-5, id="gpt2-causal"),
    pytest.param("llama", "CAUSAL_LM", SAM, 1e-5, id="llama-causal"),
    pytest.param("qwen2", "CAUSAL_LM", SAM, 1e-5, id="qwen2-causal"),
    pytest.param("t5", "SEQ_2_SEQ_LM", SAM, 1e-5, id="t5-seq2seq"),
    pytest.param("bert", "SEQ_CLS", SAM_EXTRA, 1e-5, id="bert-seqcls-bias-norm"),
    pytest.param("gpt2", "CAUSAL_LM", {**SAM_EXTRA, "include_embeddings": True}, 1e-5, id="gpt2-causal-all"),
]
GENERATIVE = [c for c in CASES if c.values[1] != "SEQ_CLS"]


@pytest.mark.parametrize(("model_id", "task", "kwargs", "tol"), CASES)
def test_only_adapter_params_change(model_id, task, kwargs, tol):
    common.check_only_adapter_params_change(model_id, task, SAMTuningConfig, kwargs, tol)


@pytest.mark.parametrize(("model_id", "task", "kwargs", "tol"), CASES)
def test_disable_gives_base(model_id, task, kwargs, tol):
    common.check_disable_gives_base(model_id, task, SAMTuningConfig, kwargs, tol)


@pytest.mark.parametrize(("model_id", "task", "kwargs", "tol"), CASES[:6] + CASES[7:])
def test_fresh_process_reload(model_id, task, kwargs, tol, tmp_path):
    common.check_fresh_process_reload(model_id, task, SAMTuningConfig, kwargs, tol, tmp_path)


@pytest.mark.parametrize(("model_id", "task", "kwargs", "tol"), CASES[:6])
def test_transformers_entry_points(model_id, task, kwargs, tol, tmp_path):
    common.check_transformers_entry_points(model_id, task, SAMTuningConfig, kwargs, tol, tmp_path)


@pytest.mark.parametrize(("model_id", "task", "kwargs", "tol"), CASES)
def test_two_adapters(model_id, task, kwargs, tol):
    common.check_two_adapters(model_id, task, SAMTuningConfig, kwargs, tol)


@pytest.mark.parametrize(("model_id", "task", "kwargs", "tol"), GENERATIVE)
def test_generate_with_cache(model_id, task, kwargs, tol):
    common.check_generate_with_cache(model_id, task, SAMTuningConfig, kwargs, tol)


@pytest.mark.parametrize(("model_id", "task", "kwargs", "tol"), [c for c in CASES if c.id != "gpt2-causal-all"])
def test_merge_unmerge_and_unload_exact(model_id, task, kwargs, tol):
    """Merging changes only the selected entries, unmerging restores them bit for bit, outputs stay the same."""
    inputs = make_inputs(model_id, task)
    model = common.build(model_id, task, SAMTuningConfig, kwargs)
    original = {n: p.detach().clone() for n, p in model.base_model.model.named_parameters() if "samtuning" not in n}
    selection = model.base_model.selection()
    expected = common.outputs(model, inputs)
    model.merge_adapter()
    torch.testing.assert_close(common.outputs(model, inputs), expected, atol=tol, rtol=0)
    model.unmerge_adapter()
    for name, param in model.base_model.model.named_parameters():
        if name in original:
            assert torch.equal(param, original[name]), f"unmerge did not restore {name} exactly"
    merged = model.merge_and_unload()
    assert not any("samtuning" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(common.outputs(merged, inputs), expected, atol=tol, rtol=0)
    merged_params = dict(merged.named_parameters())
    touched = 0
    for key, flat in selection.items():
        module_path, part = key.rsplit(".", 1)
        name = f"{module_path}.base_layer.{part}" if f"{module_path}.base_layer.{part}" in original else key
        changed = torch.nonzero(merged_params[key].reshape(-1) != original[name].reshape(-1)).flatten()
        assert set(changed.tolist()) <= set(flat.tolist()), f"{key}: entries outside the selection changed"
        touched += changed.numel()
    assert touched > 0
    for name, param in merged_params.items():  # every tensor without a selection is untouched
        source = name if name in original else None
        if source and not any(name == key for key in selection):
            assert torch.equal(param, original[source]), name


def test_tied_embedding_merge_is_refused():
    model = common.build("gpt2", "CAUSAL_LM", SAMTuningConfig, {**SAM, "include_embeddings": True})
    with pytest.raises(ValueError, match="tied embedding"):
        model.merge_and_unload()
    base = make_model("gpt2", "CAUSAL_LM")
    assert base.get_output_embeddings().weight is base.get_input_embeddings().weight


def test_unmergeable_parts_name_the_tied_embedding():
    model = common.build("gpt2", "CAUSAL_LM", SAMTuningConfig, {**SAM, "include_embeddings": True})
    parts = model.base_model.unmergeable_parts()
    assert parts == ["transformer.wte: SAM delta on a tied embedding (the output projection shares the weight)"]
    assert common.build("bert", "SEQ_CLS", SAMTuningConfig, SAM).base_model.unmergeable_parts() == []
