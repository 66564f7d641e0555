"""Tie-breaks, exact boundaries and rarely taken branches that a mutation review found untested.

Each test pins a documented rule at the point where a plausible slip (`<` for `<=`, a dropped factor, a tie sent the
other way) would change the result; every one of them failed against that slip when it was written.
"""

import os
import subprocess
import sys

import pytest
import torch
from peft import get_peft_model
from test_s3pet_numerics import _reference_linear, _reference_norm
from tiny_models import make_inputs, make_model

from adapters_hub._files import remove_stale_temporaries
from adapters_hub.export import shira_rank
from peft_designspace import S3PETConfig, SAMTuningConfig, calibrate_sam
from peft_designspace.designspace.budget import LayerCosts, _fill_to_target
from peft_designspace.designspace.grouping import group_sizes
from peft_designspace.s3pet import layer as s3pet_layer
from peft_designspace.s3pet.gates import expected_size, keep_probabilities, sample_gates
from peft_designspace.s3pet.space import Candidate
from peft_designspace.s3pet.structure import build_structure, greedy_select, knapsack_select
from peft_designspace.samtuning.selection import split_budget


# S3PET gates ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta", [0.3, 2.5])
def test_keep_probabilities_use_beta(beta):
    torch.manual_seed(0)
    alpha = torch.randn(30, dtype=torch.float64)
    sizes = torch.randint(1, 60, (30,), dtype=torch.float64)
    budget = 0.2 * float(sizes.sum())
    p, b, _ = keep_probabilities(alpha, sizes, budget, beta=beta)
    assert expected_size(p, sizes) == pytest.approx(budget, rel=1e-9)
    torch.testing.assert_close(p, torch.sigmoid((alpha - b) / beta))


def test_certain_candidates_keep_finite_gate_logits_and_gradients():
    # float32 σ is exactly 0 or 1 this far out: log p or log(1 − p) would be infinite, and α's gradient NaN
    alpha = torch.tensor([40.0, -40.0] * 25, requires_grad=True)
    sizes = torch.full((50,), 10.0)
    p, _, _ = keep_probabilities(alpha, sizes, budget=250.0)
    assert 0 < float(p.min()) and float(p.max()) < 1
    gates = sample_gates(p, torch.Generator().manual_seed(0))
    assert torch.isfinite(gates).all()
    (gates * torch.linspace(0, 1, 50)).sum().backward()
    assert torch.isfinite(alpha.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_confident_candidates_stay_below_one_after_the_renormalisation(dtype):
    # a clamp before the renormalisation let its rounding turn p back into exactly 1: log(1 − p) = −inf, α's
    # gradient NaN (114 of 800 draws like these, a final read of the change)
    for seed in range(100):
        g = torch.Generator().manual_seed(seed)
        alpha = (torch.randn(40, generator=g, dtype=dtype) * 30).requires_grad_(True)
        sizes = torch.randint(1, 100, (40,), generator=g).double()
        p, _, _ = keep_probabilities(alpha, sizes, 0.3 * float(sizes.sum()))
        assert float(p.detach().max()) < 1 and float(p.detach().min()) > 0, seed
        (sample_gates(p, g) * torch.randn(40, generator=g, dtype=dtype)).sum().backward()
        assert torch.isfinite(alpha.grad).all(), seed


# S3PET discretisation ------------------------------------------------------------------------------------------------
def test_greedy_keeps_a_candidate_that_fills_the_budget_exactly():
    assert greedy_select([0.9, 0.8], [6, 4], 10) == [0, 1]
    candidates = [Candidate(f"m{i}", "query", "lora", i, size, 1) for i, size in enumerate((6, 4))]
    structure = build_structure(candidates, [0.9, 0.8], budget=10, base_params=1000, strategy="greedy", space="l")
    assert structure["total"] == structure["budget"] == 10


def test_knapsack_ties_prefer_earlier_candidates():
    assert knapsack_select([0.5, 0.5], [10, 10], 10) == [0]
    assert knapsack_select([0.2, 0.5, 0.5], [10, 10, 10], 20) == [1, 2]


# S3PET layers --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["search", "apply"])
def test_an_unfrozen_base_weight_gets_its_gradient(monkeypatch, mode):
    # the fused node gives no gradient to the base weight, so a trainable one must take the plain path
    if mode == "search":
        config = S3PETConfig(budget=600, task_type="SEQ_CLS", init_weights=False)
    else:
        structure = {
            "format": "s3pet-structure",
            "modules": [{"path": "bert.encoder.layer.0.attention.self.query", "type": "lora", "size": 64}],
        }
        config = S3PETConfig(structure=structure, task_type="SEQ_CLS", init_weights=False)
    torch.manual_seed(0)
    model = get_peft_model(make_model("bert", "SEQ_CLS", layers=2), config).double().eval()
    weight = model.base_model.model.bert.encoder.layer[0].attention.self.query.base_layer.weight
    weight.requires_grad_(True)
    inputs = make_inputs("bert", "SEQ_CLS")
    (grad,) = torch.autograd.grad(model(**inputs).loss, [weight])
    monkeypatch.setattr(s3pet_layer.Linear, "forward", _reference_linear)
    monkeypatch.setattr(s3pet_layer.Norm, "forward", _reference_norm)
    (expected,) = torch.autograd.grad(model(**inputs).loss, [weight])
    assert float(expected.abs().max()) > 0
    torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-12)


# SAM -----------------------------------------------------------------------------------------------------------------
def test_split_budget_ties_go_to_the_earlier_tensor():
    assert split_budget([1, 1], 1) == [1, 0]
    assert split_budget([3, 3, 3], 2) == [1, 1, 0]


def test_the_embedding_padding_row_scores_zero_as_its_dense_gradient(monkeypatch):
    # the base embedding never updates its padding row (torch's backward gives it no gradient); calibration must
    # score it 0 too, also when pad tokens reach the loss (no attention mask)
    import peft_designspace.samtuning.calibration as calibration

    base = make_model("bert", "SEQ_CLS")
    reference = make_model("bert", "SEQ_CLS")
    embedding = base.bert.embeddings.word_embeddings
    assert embedding.padding_idx == 0
    batches = []
    for seed in range(3):
        inputs = make_inputs("bert", "SEQ_CLS", seed=seed)
        ids = inputs["input_ids"].clone()
        ids[:, 2:] = 0  # mostly padding, all of it attended
        batches.append({"input_ids": ids, "labels": inputs["labels"]})
    for batch in batches:  # the dense reference: Σ_b ∂L_b/∂E, with torch's own padding rule
        reference.eval()(**batch).loss.backward()
    expected = reference.bert.embeddings.word_embeddings.weight.grad.double().pow(2)
    seen = []
    original = calibration.select_top_k
    monkeypatch.setattr(
        calibration, "select_top_k", lambda scores, k, **kw: seen.extend(scores) or original(scores, k, **kw)
    )
    config = SAMTuningConfig(
        task_type="SEQ_CLS", target_modules=["word_embeddings"], include_embeddings=True, budget=8
    )
    calibrate_sam(get_peft_model(base, config).eval(), batches, show_progress=False)
    (scores,) = seen
    assert float(expected[0].abs().max()) == 0 and float(expected.max()) > 0
    torch.testing.assert_close(scores.double().reshape(expected.shape), expected, rtol=1e-4, atol=1e-18)


def test_a_merged_sam_adapter_is_not_added_again_in_forward():
    model = get_peft_model(make_model("bert", "SEQ_CLS"), SAMTuningConfig(task_type="SEQ_CLS", budget=0.02)).eval()
    calibrate_sam(model, [make_inputs("bert", "SEQ_CLS", seed=s) for s in range(2)], show_progress=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "samtuning_weight_values" in name:
                p.normal_(0, 0.5)
    inputs = make_inputs("bert", "SEQ_CLS")
    with torch.no_grad():
        unmerged = model(**inputs).logits
        model.merge_adapter()
        merged = model(**inputs).logits
        model.unmerge_adapter()
        again = model(**inputs).logits
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    torch.testing.assert_close(again, unmerged, atol=1e-6, rtol=0)
    with torch.no_grad():
        plain = model.get_base_model()
        with model.disable_adapter():
            off = plain(**inputs).logits
    assert float((unmerged - off).abs().max()) > 1e-3  # the adapter changes the outputs


# S4 ------------------------------------------------------------------------------------------------------------------
def test_group_sizes_break_ties_towards_the_bottom_groups():
    assert group_sizes(10, 4, "uniform") == [3, 3, 2, 2]
    assert group_sizes(26, 6, "increasing") == [1, 2, 3, 5, 6, 9]
    assert group_sizes(26, 6, "decreasing") == [9, 6, 5, 3, 2, 1]


def test_the_last_unit_is_not_taken_on_a_tie():
    # 20 spent of a target of 25 with a unit of 10: 30 is as far as 20, so the plan stays under the budget
    costs = {0: LayerCosts(None, [], [], unit={"lora": 10}, const={"lora": 0}, bitfit_modules=[], bitfit=0)}
    sizes = {0: {"lora": 2}}
    _fill_to_target(sizes, costs, {(0, "lora"): 25.0}, 25, lambda: costs[0].cost("lora", sizes[0]["lora"]))
    assert sizes == {0: {"lora": 2}}
    sizes = {0: {"lora": 2}}
    _fill_to_target(sizes, costs, {(0, "lora"): 26.0}, 26, lambda: costs[0].cost("lora", sizes[0]["lora"]))
    assert sizes == {0: {"lora": 3}}  # 30 is closer to 26 than 20 is


# exports -------------------------------------------------------------------------------------------------------------
def test_shira_rank_allows_a_selection_that_fills_the_weight_exactly():
    assert shira_rank([("a", 2, 2, 4)]) == 1  # r · (in + out) = 4 = in · out


def test_stale_temporaries_of_a_live_process_are_kept(tmp_path):
    out = tmp_path / "out"
    live = tmp_path / f".out.tmp-{os.getpid()}-x"
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    gone = tmp_path / f".out.tmp-{child.pid}-y"  # a process that has ended
    live.mkdir()
    gone.mkdir()
    removed = remove_stale_temporaries(out)
    assert live.is_dir(), "a running process's half-written output was deleted"
    assert not gone.exists() and removed == [gone]
