"""The S3PET layers fold gates into the base operation; outputs and gradients must equal the plain formulas.

The reference below is the direct reading of the layer equations (`docs/s3pet.md`): base output, then
`+ z·LoRA(x)`, `+ z·b`, then `+ z·LRA(y)`; norms with `w + z·Δw`, `b + z·Δb`. The layers compute the same sums in
another order (bias deltas inside the base op, gates on the low-rank intermediates), so values agree to rounding.
"""

import pytest
import torch
from peft import get_peft_model
from s3pet_helpers import searched_structure
from tiny_models import make_inputs, make_model
from torch.func import functional_call

from peft_designspace import S3PETConfig
from peft_designspace.s3pet import fused
from peft_designspace.s3pet import layer as s3pet_layer
from trainer_ext.s3pet_gradients import alpha_only_gradients


def _reference_linear(self, x, *args, **kwargs):
    result = self.base_layer(x, *args, **kwargs)
    for name in self.active_adapters:
        if name in self.s3pet_lora:
            result = result + self.gate(name, "lora") * self.s3pet_lora[name](x)
        if name in self.s3pet_bias:
            result = result + self.gate(name, "bitfit") * self.s3pet_bias[name]
    for name in self.active_adapters:
        if name in self.s3pet_lra:
            result = result + self.gate(name, "lra") * self.s3pet_lra[name](result)
    return result


def _reference_norm(self, x, *args, **kwargs):
    base = self.base_layer
    overrides, extra_bias = {}, None
    for name in self.active_adapters:
        if name in self.s3pet_lnfit:
            overrides["weight"] = (
                overrides.get("weight", base.weight) + self.gate(name, "lnfit") * self.s3pet_lnfit[name]
            )
        if name in self.s3pet_bias:
            delta = self.gate(name, "bitfit") * self.s3pet_bias[name]
            if getattr(base, "bias", None) is not None:
                overrides["bias"] = overrides.get("bias", base.bias) + delta
            else:
                extra_bias = delta if extra_bias is None else extra_bias + delta
    result = functional_call(base, overrides, (x, *args), kwargs)
    return result if extra_bias is None else result + extra_bias


def _loss_and_grads(model, inputs):
    params = [p for p in model.parameters() if p.requires_grad]
    loss = model(**inputs).loss
    return loss.detach(), torch.autograd.grad(loss, params)


@pytest.mark.parametrize("model_id", ["bert", "gpt2", "llama"])
@pytest.mark.parametrize("mode", ["search", "apply"])
def test_folded_layers_match_the_plain_formulas(monkeypatch, model_id, mode):
    task = "SEQ_CLS" if model_id == "bert" else "CAUSAL_LM"
    if mode == "search":
        config = S3PETConfig(budget=600, task_type=task, init_weights=False)
    else:
        structure = searched_structure(model_id, task, layers=2, budget=1000)
        config = S3PETConfig(structure=structure, task_type=task, init_weights=False)
    torch.manual_seed(0)
    model = get_peft_model(make_model(model_id, task, layers=2), config).double().eval()
    if mode == "search":
        with torch.no_grad():
            for a in model.base_model.architecture_parameters():
                a.normal_()
    inputs = make_inputs(model_id, task)
    loss, grads = _loss_and_grads(model, inputs)
    monkeypatch.setattr(s3pet_layer.Linear, "forward", _reference_linear)
    monkeypatch.setattr(s3pet_layer.Norm, "forward", _reference_norm)
    ref_loss, ref_grads = _loss_and_grads(model, inputs)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    assert any(g.abs().max() > 0 for g in ref_grads)
    for g, ref in zip(grads, ref_grads):
        torch.testing.assert_close(g, ref, rtol=1e-9, atol=1e-12)


def _alpha_only_grads(model, inputs):
    """The first-order α pass of `S3PETSearchTrainer`."""
    alphas = model.base_model.architecture_parameters()
    return alpha_only_gradients(model, alphas, lambda: model(**inputs).loss)


def test_alpha_pass_matches_the_plain_formulas_and_uses_the_fused_node(monkeypatch):
    torch.manual_seed(0)
    config = S3PETConfig(budget=600, task_type="SEQ_CLS", init_weights=False)
    model = get_peft_model(make_model("bert", "SEQ_CLS", layers=2), config).double().eval()
    with torch.no_grad():
        for a in model.base_model.architecture_parameters():
            a.normal_()
    inputs = make_inputs("bert", "SEQ_CLS")
    calls = []
    original = fused.FrozenLinearWithDeltas.apply
    monkeypatch.setattr(fused.FrozenLinearWithDeltas, "apply", lambda *a: calls.append(1) or original(*a))
    grads = _alpha_only_grads(model, inputs)
    assert len(calls) == 2 * 6  # every BERT projection of the 2 layers goes through the one node
    monkeypatch.setattr(s3pet_layer.Linear, "forward", _reference_linear)
    monkeypatch.setattr(s3pet_layer.Norm, "forward", _reference_norm)
    ref_grads = _alpha_only_grads(model, inputs)
    assert all(g.abs().max() > 0 for g in ref_grads)
    for g, ref in zip(grads, ref_grads):
        torch.testing.assert_close(g, ref, rtol=1e-9, atol=1e-12)


_NAMES = ("x", "weight", "bias", "A", "B", "c", "u_d", "v_d", "b_d", "u_u", "v_u", "c_u", "z")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("parts", ["lora", "lra", "both"])
@pytest.mark.parametrize("wanted", ["all", "alpha pass", "no input grad", "ungated", "bias and frozen deltas"])
def test_fused_node_gradients_match_finite_differences(bias, parts, wanted):
    """`torch.autograd.gradcheck` of `FrozenLinearWithDeltas` for every mix of parts and of requested gradients."""
    torch.manual_seed(0)
    tokens, d_in, d_out, rank, hidden = 7, 5, 4, 2, 3
    shapes = {
        "x": (tokens, d_in), "weight": (d_out, d_in), "bias": (d_out,), "A": (rank, d_in), "B": (d_out, rank),
        "c": (), "u_d": (d_out, 1), "v_d": (1, hidden), "b_d": (hidden,), "u_u": (hidden, 1), "v_u": (1, d_out),
        "c_u": (d_out,), "z": (),
    }  # fmt: skip
    values = {k: torch.randn(shape, dtype=torch.float64) for k, shape in shapes.items()}
    if not bias:
        values["bias"] = None
    if parts == "lra":
        values.update(A=None, B=None, c=None)
    if parts == "lora":
        values.update(dict.fromkeys(_NAMES[6:]))
    if wanted == "ungated":  # apply mode: gate and scale are plain floats
        values.update({k: 0.7 for k in ("c", "z") if values[k] is not None})
    trainable = {
        "all": set(_NAMES) - {"weight"},
        "alpha pass": {"x", "bias", "c", "z"},
        "no input grad": set(_NAMES) - {"weight", "x"},
        "ungated": set(_NAMES) - {"weight", "c", "z"},
        # apply mode with a trained bias delta beside frozen candidates: the bias also reaches the LRA through y
        "bias and frozen deltas": {"bias"} if bias else {"x"},
    }[wanted]
    inputs = []
    for name in _NAMES:
        value = values[name]
        if isinstance(value, torch.Tensor) and name in trainable:
            value.requires_grad_()
        inputs.append(value)
    assert torch.autograd.gradcheck(fused.FrozenLinearWithDeltas.apply, tuple(inputs))
