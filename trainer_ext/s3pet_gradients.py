"""The α gradients of one S3PET search step: first order, and the DARTS second-order approximation.

`S3PETSearchTrainer` and the step benchmark (`bench/s3pet_search_step.py`) both call these, so the benchmark times
the trainer's own arithmetic.

- `alpha_only_gradients`: `∇α L_search(w, α)`;
- `darts_alpha_gradients`: `∇α L_search(w', α) − ξ (∇α L_train(w⁺, α) − ∇α L_train(w⁻, α)) / 2ε`, with the virtual
  step `w'` and `w± = w ± ε ∇w' L_search(w', α)`, `ε = 0.01 / ‖∇w' L_search‖`. With the SGD virtual step
  `w' = w − ξ ∇w L_train(w, α)` this is the derivative in α of the one-step unrolled loss
  `L_search(w − ξ ∇w L_train(w, α), α)`, with the mixed Hessian-vector product taken by central differences.
  `adam_virtual_step` gives the reference code's virtual step instead: one step of the weights' own Adam/AdamW from a
  copy of its state (methods.md §3.5; the Hessian term keeps the same form there). The virtual and shifted weights go
  through `torch.func.functional_call` over the shared frozen base: the model is never copied.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch


def output_loss(model: torch.nn.Module) -> Callable[[dict, dict | None], torch.Tensor]:
    """The `loss_fn` `darts_alpha_gradients` takes, for a model that returns `.loss`: `loss_fn(inputs, params=None)`
    is `model(**inputs).loss`, with the named tensors `params` in place of the model's own when given.

    Example:

    ```py
    >>> import torch
    >>> from peft import get_peft_model
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> from peft_designspace import S3PETConfig
    >>> from trainer_ext.s3pet_gradients import output_loss
    >>> config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    ...                     vocab_size=100)
    >>> model = get_peft_model(BertForSequenceClassification(config), S3PETConfig(budget=400, task_type="SEQ_CLS"))
    >>> batch = {"input_ids": torch.randint(1, 100, (2, 8)), "labels": torch.tensor([0, 1])}
    >>> loss_fn = output_loss(model)
    >>> loss_fn(batch).shape  # with the model's own weights
    torch.Size([])
    >>> zeroed = {n: torch.zeros_like(p) for n, p in model.named_parameters() if "classifier" in n}
    >>> float(loss_fn(batch, zeroed).detach())  # zero logits: the loss is log 2  # doctest: +ELLIPSIS
    0.693...

    ```
    """

    def loss_fn(inputs: dict, params: dict | None = None) -> torch.Tensor:
        if params is None:
            return model(**inputs).loss
        return torch.func.functional_call(model, params, (), inputs).loss

    return loss_fn


def _zeros_for_none(params: list, grads) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def alpha_only_gradients(
    model: torch.nn.Module, alphas: list, loss_fn: Callable[[], torch.Tensor], loss_scale: float = 1.0
) -> list:
    """The first-order α pass: the gradient of `loss_fn()` in `alphas` only (zeros where `alphas` are unused).

    Every other trainable parameter of `model` is frozen meanwhile, so autograd records no graph for the deltas and
    the head, and the S3PET layers compute only the gates' gradients; they are unfrozen afterwards. With
    `loss_scale`, the backward pass runs on `loss_scale · loss` and the gradients are divided by it (fp16 loss
    scaling: small gradients do not underflow in half precision); they may then be non-finite, for the caller to
    check.

    Example:

    ```py
    >>> import torch
    >>> from peft import get_peft_model
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> from peft_designspace import S3PETConfig
    >>> from trainer_ext.s3pet_gradients import alpha_only_gradients
    >>> config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    ...                     vocab_size=100)
    >>> model = get_peft_model(BertForSequenceClassification(config), S3PETConfig(budget=400, task_type="SEQ_CLS"))
    >>> batch = {"input_ids": torch.randint(1, 100, (2, 8)), "labels": torch.tensor([0, 1])}
    >>> alphas = model.base_model.architecture_parameters()
    >>> grads = alpha_only_gradients(model, alphas, lambda: model(**batch).loss)
    >>> [g.shape for g in grads] == [a.shape for a in alphas]
    True

    ```
    """
    alpha_ids = {id(a) for a in alphas}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in alpha_ids]
    for p in others:
        p.requires_grad_(False)
    try:
        grads = torch.autograd.grad(loss_fn() * loss_scale, alphas, allow_unused=True)
    finally:
        for p in others:
            p.requires_grad_(True)
    return [g / loss_scale for g in _zeros_for_none(alphas, grads)]


VirtualStep = Callable[[dict[str, torch.Tensor], list[torch.Tensor | None], float], dict[str, torch.Tensor]]


def sgd_virtual_step(
    weights: dict[str, torch.Tensor], grads: list[torch.Tensor | None], xi: float
) -> dict[str, torch.Tensor]:
    """`w' = w − ξ ∇w L_train` (original DARTS); weights without a gradient stay where they are."""
    return {n: p - xi * g if g is not None else p for (n, p), g in zip(weights.items(), grads)}


def _unwrap_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    while hasattr(optimizer, "optimizer"):  # accelerate's AcceleratedOptimizer, and similar wrappers
        optimizer = optimizer.optimizer
    return optimizer


def check_adam_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """Raise unless `optimizer` is a torch `Adam` / `AdamW` whose step `adam_virtual_step` can replay."""
    inner = _unwrap_optimizer(optimizer)
    if not isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)):  # AdamW subclasses Adam only from torch 2.6
        raise ValueError(
            f"`virtual_step='adam'` replays the weights' Adam or AdamW step, but their optimizer is "
            f"{type(inner).__name__}; use a torch Adam/AdamW optimizer (`optim='adamw_torch'` or "
            "`'adamw_torch_fused'`, Trainer's default) or `virtual_step='sgd'`."
        )
    if any(group.get("maximize", False) for group in inner.param_groups):
        raise ValueError("`virtual_step='adam'` does not replay `maximize=True`; use `virtual_step='sgd'`.")


def adam_virtual_step(optimizer: torch.optim.Optimizer) -> VirtualStep:
    """The reference code's virtual step: one Adam/AdamW step of the weights from a copy of `optimizer`'s state.

    Each weight takes the step its own optimizer would take with learning rate ξ (its group's betas, eps, weight
    decay and AMSGrad setting, its `exp_avg`, `exp_avg_sq` and step count), computed out of place: the optimizer and
    the weights are not touched. A weight without state (before the first weight step) starts from zeros, as Adam
    does. Weights without a gradient are skipped, as `optimizer.step()` skips them.

    Example:

    ```py
    >>> import torch
    >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    >>> optimizer = torch.optim.AdamW([w], lr=0.1, weight_decay=0.0)
    >>> step = adam_virtual_step(optimizer)
    >>> virtual = step({"w": w}, [torch.tensor([0.5, -0.5])], 0.1)["w"]
    >>> virtual.detach()  # Adam's first step moves each entry by the learning rate
    tensor([ 0.9000, -1.9000])

    ```
    """
    check_adam_optimizer(optimizer)
    inner = _unwrap_optimizer(optimizer)
    group_of = {id(p): group for group in inner.param_groups for p in group["params"]}

    def step(weights: dict[str, torch.Tensor], grads: list[torch.Tensor | None], xi: float) -> dict[str, torch.Tensor]:
        virtual = {}
        for (name, p), g in zip(weights.items(), grads):
            group = group_of.get(id(p))
            if g is None or group is None:
                virtual[name] = p
                continue
            beta1, beta2 = group["betas"]
            decay = group["weight_decay"]
            decoupled = group.get("decoupled_weight_decay", isinstance(inner, torch.optim.AdamW))
            state = inner.state.get(p, {})
            count = float(state["step"]) + 1 if "step" in state else 1.0
            g = g.to(torch.float32) if p.dtype in (torch.float16, torch.bfloat16) else g
            base = p.detach().to(g.dtype)
            if decay and not decoupled:
                g = g + decay * base
            m = state["exp_avg"].to(g.dtype) * beta1 + (1 - beta1) * g if state else (1 - beta1) * g
            v = state["exp_avg_sq"].to(g.dtype) * beta2 + (1 - beta2) * g * g if state else (1 - beta2) * g * g
            if group.get("amsgrad", False) and "max_exp_avg_sq" in state:
                v = torch.maximum(state["max_exp_avg_sq"].to(g.dtype), v)
            denom = (v / (1 - beta2**count)).sqrt() + group["eps"]
            new = base * (1 - xi * decay) if decay and decoupled else base
            virtual[name] = (new - xi * (m / (1 - beta1**count)) / denom).to(p.dtype)
        return virtual

    return step


def darts_alpha_gradients(
    model: torch.nn.Module,
    alphas: list,
    loss_fn: Callable[[dict, dict | None], torch.Tensor],
    train_inputs: dict,
    search_inputs: dict,
    xi: float,
    loss_scale: float = 1.0,
    virtual_step: VirtualStep = sgd_virtual_step,
) -> list[torch.Tensor]:
    """The DARTS second-order α gradient (see the module docstring), in four passes and without a model copy.

    Args:
        model (`torch.nn.Module`): the search model; its trainable parameters other than `alphas` are the weights w.
        alphas (`list[torch.nn.Parameter]`): the architecture parameters.
        loss_fn (`Callable[[dict, dict | None], torch.Tensor]`): `loss_fn(inputs, params)` is the loss of `model` on
            `inputs`, with the named tensors `params` in place of the model's own (`None`: the model as it is);
            `output_loss(model)` for a model that returns `.loss`.
        train_inputs (`dict`), search_inputs (`dict`): a batch of the weight stream and one of the search stream.
        xi (`float`): the virtual step's learning rate (the trainer passes the weights' current learning rate).
        loss_scale (`float`, *optional*, defaults to 1.0): every backward pass runs on `loss_scale · loss` and its
            gradients are divided by it (fp16 loss scaling); the result may then be non-finite, for the caller to
            check.
        virtual_step (`Callable`, *optional*, defaults to `sgd_virtual_step`): `virtual_step(weights, grads, xi)`
            returns the virtual weights `w'`; `adam_virtual_step(optimizer)` replays the weights' Adam/AdamW step.

    Returns:
        `list[torch.Tensor]`: one gradient per α (zeros where an α is unused).

    Example:

    ```py
    >>> import torch
    >>> from peft import get_peft_model
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> from peft_designspace import S3PETConfig
    >>> from trainer_ext.s3pet_gradients import darts_alpha_gradients, output_loss
    >>> config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    ...                     vocab_size=100)
    >>> model = get_peft_model(BertForSequenceClassification(config), S3PETConfig(budget=400, task_type="SEQ_CLS"))
    >>> batch = {"input_ids": torch.randint(1, 100, (2, 8)), "labels": torch.tensor([0, 1])}
    >>> search_batch = {"input_ids": torch.randint(1, 100, (2, 8)), "labels": torch.tensor([1, 1])}
    >>> alphas = model.base_model.architecture_parameters()
    >>> grads = darts_alpha_gradients(model, alphas, output_loss(model), batch, search_batch, xi=1e-3)
    >>> [g.shape for g in grads] == [a.shape for a in alphas]
    True

    ```
    """
    alpha_ids = {id(a) for a in alphas}
    weights = {n: p for n, p in model.named_parameters() if p.requires_grad and id(p) not in alpha_ids}
    same_draws = _same_random_draws(alphas)
    with same_draws():
        train_loss = loss_fn(train_inputs, None) * loss_scale
    g_w = [
        g / loss_scale if g is not None else None
        for g in torch.autograd.grad(train_loss, list(weights.values()), allow_unused=True)
    ]
    with torch.no_grad():
        stepped = virtual_step(weights, g_w, xi)
    # a weight the step leaves as it is comes back as itself: only that one is copied, to get a leaf of its own
    virtual = {n: (stepped[n].clone() if stepped[n] is p else stepped[n]).requires_grad_() for n, p in weights.items()}
    with same_draws():
        search_loss = loss_fn(search_inputs, virtual) * loss_scale
    grads = [
        g / loss_scale if g is not None else None
        for g in torch.autograd.grad(search_loss, alphas + list(virtual.values()), allow_unused=True)
    ]
    d_alpha = _zeros_for_none(alphas, grads[: len(alphas)])
    d_virtual = _zeros_for_none(list(virtual.values()), grads[len(alphas) :])
    norm = float(torch.sqrt(sum((d.double() ** 2).sum() for d in d_virtual))) if d_virtual else 0.0
    if not math.isfinite(norm):  # an fp16 overflow: the caller skips this α step
        return [torch.full_like(a, math.nan) for a in alphas]
    if norm == 0.0:  # the search loss does not depend on the weights: no second-order term
        return d_alpha
    eps = 0.01 / norm
    terms = []
    for sign in (1.0, -1.0):
        shifted = {n: (p + sign * eps * d).detach() for (n, p), d in zip(weights.items(), d_virtual)}
        with same_draws() if sign > 0 else contextlib.nullcontext():  # the last pass advances the generators
            loss = loss_fn(train_inputs, shifted) * loss_scale
        grads = torch.autograd.grad(loss, alphas, allow_unused=True)
        terms.append([g / loss_scale for g in _zeros_for_none(alphas, grads)])
    return [da - xi * (gp - gm) / (2 * eps) for da, gp, gm in zip(d_alpha, *terms)]


def _same_random_draws(alphas: list) -> Callable[[], contextlib.AbstractContextManager]:
    """A context that restores torch's generators (CPU, and the CUDA device of α) when it exits.

    Every pass of the second-order step but the last runs inside it, so all four start from the same generator
    state: they share the gate noise `u` (drawn first, on the CPU, by the tuner's forward pre-hook), as the paper's
    step does, and passes over the same batch also share their dropout masks, so the central difference
    `∇α L_train(w⁺) − ∇α L_train(w⁻)` measures the weight shift and not two different draws. The generators then
    advance as for one pass.
    """
    devices = sorted({a.device.index or 0 for a in alphas if a.device.type == "cuda"})
    return lambda: torch.random.fork_rng(devices=devices)
