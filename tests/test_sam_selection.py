"""SAM selection against a brute-force reference on a tiny MLP: explicit gradients, the explicit Hessian, exact
counts and deterministic ties; plus the top-k helpers on their own."""

import copy
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from peft import get_peft_model
from torch import nn
from torch.func import functional_call

from peft_designspace import SAMTuningConfig, calibrate_sam
from peft_designspace.samtuning.selection import select_top_k, split_budget

TARGETS = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]  # module order, weight before bias


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(5, 7)
        self.fc2 = nn.Linear(7, 3)

    def forward(self, x, labels=None):
        logits = self.fc2(torch.tanh(self.fc1(x)))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SimpleNamespace(loss=loss, logits=logits)


def batches(n: int = 4) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    return [{"x": torch.randn(6, 5, generator=g), "labels": torch.randint(0, 3, (6,), generator=g)} for _ in range(n)]


def reference_stats(mlp: TinyMLP, data: list[dict], probes: int = 0, seed: int = 0) -> dict:
    """Per-batch gradients and (for probes > 0) z ⊙ Hz with the explicit Hessian of the flattened parameters."""
    params = {k: p.detach().clone() for k, p in mlp.named_parameters()}
    shapes = {k: params[k].shape for k in TARGETS}
    sizes = [params[k].numel() for k in TARGETS]
    theta = torch.cat([params[k].reshape(-1) for k in TARGETS])

    def loss_of(vector, batch):
        parts = dict(zip(TARGETS, [p.reshape(shapes[k]) for k, p in zip(TARGETS, vector.split(sizes))]))
        return functional_call(mlp, parts, (), dict(batch)).loss

    g_sum, g_sq, curv = torch.zeros_like(theta), torch.zeros_like(theta), torch.zeros_like(theta)
    generator = torch.Generator().manual_seed(seed)
    for batch in data:
        grad = torch.autograd.functional.jacobian(lambda v: loss_of(v, batch), theta)  # noqa: B023
        g_sum += grad
        g_sq += grad**2
        if probes:
            hessian = torch.autograd.functional.hessian(lambda v: loss_of(v, batch), theta)  # noqa: B023
            for _ in range(probes):  # same draw order as calibrate_sam: per probe, tensors in module order
                z = torch.cat(
                    [
                        (torch.randint(0, 2, shapes[k], generator=generator) * 2 - 1).reshape(-1).to(theta.dtype)
                        for k in TARGETS
                    ]
                )
                curv += z * (hessian @ z)
    return {"sum": g_sum, "sq": g_sq, "curv": curv, "sizes": sizes, "theta": theta}


def reference_scores(stats: dict, score: str, curvature: str, batches_: int, probes: int = 1) -> torch.Tensor:
    if score == "magnitude":
        return stats["theta"].abs()
    if score == "fisher":
        return stats["sq"]
    if curvature == "constant":
        return stats["sum"] ** 2
    mean = stats["sum"] / batches_
    h = stats["sq"] / batches_ if curvature == "fisher" else (stats["curv"] / (batches_ * probes)).abs()
    return mean**2 / (h + 1e-30)


def reference_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Stable order: larger score first, then earlier position in the concatenation (tensor order, flat index)."""
    order = sorted(range(scores.numel()), key=lambda i: (-float(scores[i]), i))
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[order[:k]] = True
    return mask


def well_separated_k(scores: torch.Tensor, near: int) -> int:
    """A budget near `near` where the k-th and (k+1)-th scores differ clearly (float32 vs float64 summation)."""
    values = scores.sort(descending=True).values
    for k in sorted(range(2, scores.numel() - 1), key=lambda k: abs(k - near)):
        if values[k - 1] > values[k] * (1 + 1e-3) + 1e-12:
            return k
    raise AssertionError("no well-separated budget")


def calibrated_mask(config: SAMTuningConfig, data) -> torch.Tensor:
    model = get_peft_model(TinyMLP(), config)
    calibrate_sam(model, data, show_progress=False)
    selection = model.base_model.selection()
    masks = []
    for key in TARGETS:
        mask = torch.zeros(dict(TinyMLP().named_parameters())[key].numel(), dtype=torch.bool)
        mask[selection[key]] = True
        masks.append(mask)
    return torch.cat(masks)


@pytest.mark.parametrize(
    ("score", "curvature"),
    [("sam", "constant"), ("sam", "fisher"), ("sam", "hutchinson"), ("fisher", "constant"), ("magnitude", "constant")],
)
def test_global_mask_matches_brute_force(score, curvature):
    data = batches()
    mlp = TinyMLP().double()
    stats = reference_stats(
        mlp,
        [{k: v.double() if v.is_floating_point() else v for k, v in b.items()} for b in data],
        probes=2 if curvature == "hutchinson" else 0,
        seed=3,
    )
    scores = reference_scores(stats, score, curvature, len(data), probes=2)
    k = well_separated_k(scores, near=20)
    config = SAMTuningConfig(
        target_modules=["fc1", "fc2"],
        include_biases=True,
        budget=k,
        score=score,
        curvature=curvature,
        hutchinson_probes=2,
        seed=3,
    )
    got = calibrated_mask(config, data)
    assert int(got.sum()) == k
    assert torch.equal(got, reference_mask(scores, k))


def test_per_tensor_counts_are_exact_and_each_tensor_takes_its_own_top_k():
    data = batches()
    stats = reference_stats(
        TinyMLP().double(), [{k: v.double() if v.is_floating_point() else v for k, v in b.items()} for b in data]
    )
    scores = reference_scores(stats, "sam", "constant", len(data))
    config = SAMTuningConfig(target_modules=["fc1", "fc2"], include_biases=True, budget=0.3, scope="per_tensor")
    got = calibrated_mask(config, data)
    counts = split_budget(stats["sizes"], int(0.3 * sum(stats["sizes"])))
    offset = 0
    for size, count in zip(stats["sizes"], counts):
        part = got[offset : offset + size]
        assert int(part.sum()) == count
        chosen, rest = scores[offset : offset + size][part], scores[offset : offset + size][~part]
        if count and rest.numel():
            assert chosen.min() >= rest.max() * (1 - 1e-4)
        offset += size
    assert int(got.sum()) == int(0.3 * sum(stats["sizes"]))


def test_ties_are_broken_by_tensor_then_index():
    mlp = TinyMLP()
    with torch.no_grad():
        for p in mlp.parameters():
            p.fill_(0.5)  # every magnitude ties
    model = get_peft_model(
        mlp, SAMTuningConfig(target_modules=["fc1", "fc2"], include_biases=True, budget=40, score="magnitude")
    )
    calibrate_sam(model, show_progress=False)
    selection = model.base_model.selection()
    assert selection["fc1.weight"].tolist() == list(range(35))
    assert selection["fc1.bias"].tolist() == list(range(5))
    assert selection["fc2.weight"].numel() == 0 and selection["fc2.bias"].numel() == 0


def test_random_score_is_seeded():
    def pick(seed):
        model = get_peft_model(
            TinyMLP(), SAMTuningConfig(target_modules=["fc1", "fc2"], budget=10, score="random", seed=seed)
        )
        calibrate_sam(model, show_progress=False)
        return {k: v.tolist() for k, v in model.base_model.selection().items()}

    assert pick(1) == pick(1)
    assert pick(1) != pick(2)


def test_calibration_leaves_outputs_and_head_untouched():
    data = batches()
    model = get_peft_model(TinyMLP(), SAMTuningConfig(target_modules=["fc1"], budget=5, modules_to_save=["fc2"]))
    before = model(**data[0]).logits.detach()
    calibrate_sam(model, data, show_progress=False)
    assert torch.equal(model(**data[0]).logits.detach(), before)
    assert all(p.grad is None for p in model.parameters()), "calibration left gradients behind"
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "base_model.model.fc1.samtuning_weight_values.default",
        "base_model.model.fc2.modules_to_save.default.weight",
        "base_model.model.fc2.modules_to_save.default.bias",
    }


def test_clipping_rescales_each_batch_before_accumulating():
    data = batches(3)
    reference = copy.deepcopy(TinyMLP())
    grads = []
    for batch in data:
        reference.zero_grad()
        reference(**batch).loss.backward()
        g = reference.fc1.weight.grad.clone()
        grads.append(g * min(1.0, 0.01 / (g.norm() + 1e-6)))
    scores = sum(grads).reshape(-1) ** 2
    k = well_separated_k(scores.double(), near=8)
    model = get_peft_model(TinyMLP(), SAMTuningConfig(target_modules=["fc1"], budget=k))
    calibrate_sam(model, data, max_grad_norm=0.01, show_progress=False)
    got = torch.zeros(35, dtype=torch.bool)
    got[model.base_model.selection()["fc1.weight"]] = True
    assert torch.equal(got, reference_mask(scores, k))


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=5),
    data=st.data(),
)
def test_select_top_k_matches_a_stable_sort(sizes, data):
    levels = data.draw(st.integers(1, 6))  # few distinct values: many ties
    scores = [
        torch.tensor(data.draw(st.lists(st.integers(0, levels), min_size=n, max_size=n)), dtype=torch.float32) / levels
        for n in sizes
    ]
    k = data.draw(st.integers(0, sum(sizes)))
    picked = select_top_k(scores, k)
    got = torch.cat([torch.zeros(s.numel(), dtype=torch.bool).index_fill_(0, p, True) for s, p in zip(scores, picked)])
    assert torch.equal(got, reference_mask(torch.cat(scores), k))
    assert all(torch.equal(p, p.sort().values) for p in picked)


@given(sizes=st.lists(st.integers(0, 50), min_size=1, max_size=6).filter(sum), data=st.data())
def test_split_budget_is_exact_and_bounded(sizes, data):
    k = data.draw(st.integers(0, sum(sizes)))
    counts = split_budget(sizes, k)
    assert sum(counts) == k and all(0 <= c <= n for c, n in zip(counts, sizes))


def test_global_selection_shows_its_counting_passes(capsys):
    """The threshold search makes up to 31 passes over every score (minutes for a 7B model on a CPU thread), and
    showed nothing while it ran (a review of scaling, 2026-11-25)."""
    scores = [torch.rand(300, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    quiet = select_top_k(scores, 50)
    assert "SAM selection" not in capsys.readouterr().err
    shown = select_top_k(scores, 50, show_progress=True)
    assert "SAM selection" in capsys.readouterr().err
    assert [q.tolist() for q in quiet] == [s.tolist() for s in shown]
