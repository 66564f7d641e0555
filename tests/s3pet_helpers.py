"""Shared helpers of the S3PET tests: a deterministic searched structure for any tiny model."""

import torch
from peft import get_peft_model
from tiny_models import make_model

from peft_designspace import S3PETConfig


def searched_structure(
    model_id: str, task: str, budget: int = 1200, space="m", seed: int = 0, hidden: int = 32, layers: int = 8, **kwargs
) -> dict:
    """A structure derived from random (seeded) α on the search space of a tiny model."""
    base = make_model(model_id, task, hidden=hidden, layers=layers)
    model = get_peft_model(base, S3PETConfig(budget=budget, search_space=space, task_type=task))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for alpha in model.base_model.architecture_parameters():
            alpha.copy_(torch.randn(alpha.shape, generator=generator) * 2)
    return model.base_model.derive_structure(**kwargs)


def finite_differences(alphas: list, objective, h: float = 1e-5) -> torch.Tensor:
    """Central differences of `objective()` (a float) in every entry of `alphas`, flattened; `alphas` are restored."""
    flat = torch.cat([a.detach().reshape(-1) for a in alphas])
    sizes = [a.numel() for a in alphas]

    def at(vector):
        with torch.no_grad():
            for a, part in zip(alphas, vector.split(sizes)):
                a.copy_(part.view_as(a))
        return objective()

    fd = torch.zeros_like(flat)
    for i in range(flat.numel()):
        up, down = flat.clone(), flat.clone()
        up[i] += h
        down[i] -= h
        fd[i] = (at(up) - at(down)) / (2 * h)
    at(flat)
    return fd
