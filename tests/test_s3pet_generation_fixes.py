"""S3PET on generative and deep models, from reviews of the paper's T5 journey and of scaling (2026-11-25):

- without a `task_type`, PEFT's `generate()` bypassed the tuner's, so a search-mode model drew new gates at every
  decoding step (in train mode the cache then held keys and values of earlier draws);
- T5's structure heatmap put encoder and decoder modules with the same inner path in one row, and drew cells without
  a candidate as a keep probability of 0;
- the trajectory figure grew with the candidate count (16,716 pixels tall for T5-large's 912 candidates).
"""

import math

import pytest
import torch
from peft import PeftModel, get_peft_model
from tiny_models import make_model

from peft_designspace import S3PETConfig
from peft_designspace.s3pet import plot


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


def _t5_candidates():
    model = get_peft_model(
        make_model("t5", "SEQ_2_SEQ_LM", layers=2), S3PETConfig(budget=0.05, task_type="SEQ_2_SEQ_LM")
    )
    return model.base_model, [c.to_dict() for c in model.base_model.candidates()]


def test_t5_heatmap_rows_keep_encoder_and_decoder_apart_and_blank_missing_cells():
    tuner, frame = _t5_candidates()
    rows, layers, grid = plot.structure_grid(frame, frame=frame)
    for row in rows:  # every row holds modules of one layer list
        assert len({plot._stack(m) for m in frame if plot._row_name(m, True) == row}) == 1, row
    present = sum(1 for r in grid for v in r if not math.isnan(v))
    assert present == len({(plot._row_name(m, True), plot.module_layer(m)) for m in frame})
    assert present < len(rows) * len(layers)  # cells without a candidate are NaN, not 0
    encoder_columns = len({plot.module_layer(m) for m in frame if plot._stack(m).startswith("encoder")})
    assert 0 < encoder_columns < len(layers)
    assert plot._stack_boundaries(frame, layers) == [encoder_columns - 0.5]  # the encoder's layers, then the decoder's
    structure = tuner.derive_structure()
    _, _, kept = plot.structure_grid(structure["modules"], frame=frame)
    assert sum(v for r in kept for v in r if not math.isnan(v)) == len(structure["modules"])


def test_trajectory_of_many_candidates_keeps_a_bounded_height(tmp_path):
    import matplotlib.image

    candidates = [
        {"path": f"model.layers.{i // 10}.mlp.down_proj", "type": "bitfit", "layer": i // 10} for i in range(400)
    ]
    for i, c in enumerate(candidates):
        c["path"] += f".{i}"
    history = [[(i % 7) / 10 for i in range(400)], [(i % 5) / 10 for i in range(400)]]
    kept = {f"{c['path']}:bitfit" for c in candidates[:30]}
    path = plot.plot_trajectory(history, [1, 2], candidates, kept, tmp_path / "t.png")
    height = matplotlib.image.imread(path).shape[0]
    assert height <= (0.12 * plot.MAX_LABELLED_ROWS + 2) * 150 + 1


def test_structure_plot_of_a_deep_model_gets_wider_panels(tmp_path):
    import matplotlib.image

    frame = [{"path": f"model.layers.{i}.self_attn.q_proj", "type": "lora", "size": 8, "p": i / 48} for i in range(48)]
    structure = {"modules": frame[:5], "total": 40, "budget": 40}
    path = plot.plot_structure(structure, tmp_path / "s.png", frame)
    assert matplotlib.image.imread(path).shape[1] > 2 * 8 * 120  # two panels wider than 8 inches at 120 dpi


def test_hand_written_t5_structure_lists_encoder_rows_first_and_draws_no_false_boundary():
    modules = [
        {"path": "encoder.block.0.layer.0.SelfAttention.q", "type": "lora", "size": 8},
        {"path": "encoder.block.1.layer.0.SelfAttention.q", "type": "lora", "size": 8},
        {"path": "decoder.block.0.layer.0.SelfAttention.q", "type": "lora", "size": 8},
    ]  # no `layer`: both lists number their blocks from 0, so encoder and decoder share columns; rows follow the
    # order the lists appear in (the names alone would put "decoder" first)
    rows, layers, _ = plot.structure_grid(modules)
    assert rows == ["lora @ encoder.block/layer.0.SelfAttention.q", "lora @ decoder.block/layer.0.SelfAttention.q"]
    assert plot._stack_boundaries(modules, layers) == []
