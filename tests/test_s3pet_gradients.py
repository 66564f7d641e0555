"""The α gradients of a search step against finite differences of the objectives they are derivatives of."""

import pytest
import torch
from peft import get_peft_model
from s3pet_helpers import finite_differences
from tiny_models import make_inputs, make_model

import peft_designspace.s3pet.model as s3pet_model
from peft_designspace import S3PETConfig
from trainer_ext.s3pet_gradients import alpha_only_gradients, darts_alpha_gradients, output_loss

XI = 0.5  # large, so that the second-order term is far above the tolerance


@pytest.fixture
def plain_gates(monkeypatch):
    """Gates `p = σ(α)`: no budget shift, no stop-gradient renormalisation, so autograd's α gradient is the
    derivative of the loss (the budgeted gates are checked in `test_s3pet_search.py`)."""
    monkeypatch.setattr(s3pet_model, "keep_probabilities", lambda alpha, *args: (torch.sigmoid(alpha), 0.0, 0.0))


def _setup():
    torch.manual_seed(0)
    base = make_model("bert", "SEQ_CLS", layers=2).double()
    model = get_peft_model(base, S3PETConfig(budget=600, task_type="SEQ_CLS", init_weights=False)).double().eval()
    alphas = model.base_model.architecture_parameters()
    with torch.no_grad():
        for a in alphas:
            a.copy_(torch.randn(a.shape, dtype=a.dtype))

    loss_fn = output_loss(model)
    train, search = make_inputs("bert", "SEQ_CLS", seed=1), make_inputs("bert", "SEQ_CLS", seed=2)
    return model, alphas, loss_fn, train, search


def _flat(grads):
    return torch.cat([g.reshape(-1) for g in grads])


def test_first_order_gradient_is_the_search_loss_derivative(plain_gates):
    model, alphas, loss_fn, _, search = _setup()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    grad = _flat(alpha_only_gradients(model, alphas, lambda: loss_fn(search)))
    with torch.no_grad():
        fd = finite_differences(alphas, lambda: float(loss_fn(search)))
    assert fd.abs().max() > 1e-6, "the search loss does not depend on α"
    torch.testing.assert_close(grad, fd, atol=1e-8, rtol=1e-5)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == trainable  # unfrozen again


def test_second_order_gradient_is_the_unrolled_loss_derivative(plain_gates):
    model, alphas, loss_fn, train, search = _setup()
    alpha_ids = {id(a) for a in alphas}
    weights = {n: p for n, p in model.named_parameters() if p.requires_grad and id(p) not in alpha_ids}
    before = {n: p.detach().clone() for n, p in weights.items()}

    def unrolled() -> float:  # L_search(w - ξ ∇w L_train(w, α), α)
        g = torch.autograd.grad(loss_fn(train), list(weights.values()))
        virtual = {n: (p - XI * d).detach() for (n, p), d in zip(weights.items(), g)}
        with torch.no_grad():
            return float(loss_fn(search, virtual))

    grad = _flat(darts_alpha_gradients(model, alphas, loss_fn, train, search, XI))
    fd = finite_differences(alphas, unrolled)
    scale = float(fd.abs().max())
    torch.testing.assert_close(grad, fd, atol=1e-4 * scale, rtol=1e-3)
    first = _flat(alpha_only_gradients(model, alphas, lambda: loss_fn(search)))
    assert float((first - fd).abs().max()) > 0.05 * scale, "the second-order term is too small to be tested"
    for n, p in weights.items():  # the virtual and shifted weights never touch the model's own
        torch.testing.assert_close(p.detach(), before[n], atol=0, rtol=0)


def test_loss_scale_is_divided_out_of_every_pass():
    model, alphas, loss_fn, train, search = _setup()
    for scale in (1024.0, 1 / 64):
        first = alpha_only_gradients(model, alphas, lambda: loss_fn(search), scale)
        torch.testing.assert_close(_flat(first), _flat(alpha_only_gradients(model, alphas, lambda: loss_fn(search))))
        second = darts_alpha_gradients(model, alphas, loss_fn, train, search, XI, loss_scale=scale)
        torch.testing.assert_close(
            _flat(second), _flat(darts_alpha_gradients(model, alphas, loss_fn, train, search, XI))
        )
