"""`calibrate_sam`: score every targeted entry on a few batches at the pre-trained weights, keep the top-k.

Gradients are taken at θ0 with no optimizer step. For linear layers (plain or quantized) and embeddings they come from
a probe on the layer output (`ops.GradProbe`): the backward pass hands `∂L/∂y` and `x` to a sink that adds
`(∂L/∂y)ᵀ x` into a float32 accumulator, one layer at a time, so no dense gradient is ever stored on the weights
and 8-bit/4-bit backbones work unchanged. Norm parts (small vectors) use zero leaves instead.
"""

import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

import torch
from peft import PeftModel
from tqdm.auto import tqdm

from .config import SAMTuningConfig
from .layer import SAMTuningLayer, probe_forward
from .model import SAMTuningModel, has_selection
from .selection import check_scores, select_top_k

DATA_SCORES = ("sam", "fisher")
CURVATURE_EPS = 1e-30  # keeps 0/0 at 0; entries with a zero gradient score 0 whatever h is


class _Accumulator:
    """Statistics of one targeted tensor (float32): Σ_b g_b and, when needed, Σ_b g_b² and Σ z ⊙ Hz."""

    def __init__(self, shape, device: torch.device, squares: bool, per_batch: bool, curvature: bool) -> None:
        self.sum = torch.zeros(shape, device=device)
        self.sq = torch.zeros(shape, device=device) if squares else None
        self.batch = torch.zeros(shape, device=device) if per_batch else None
        self.curv = torch.zeros(shape, device=device) if curvature else None  # Σ z ⊙ Hz (Hutchinson)

    def add(self, grad: torch.Tensor) -> None:
        (self.batch if self.batch is not None else self.sum).add_(grad.reshape(self.sum.shape).float())

    def end_batch(self, scale: float = 1.0) -> None:
        if self.batch is None:
            return
        if scale != 1.0:
            self.batch.mul_(scale)
        self.sum.add_(self.batch)
        if self.sq is not None:
            self.sq.addcmul_(self.batch, self.batch)
        self.batch.zero_()


def _tuner_of(model) -> SAMTuningModel:
    tuner = model.base_model if isinstance(model, PeftModel) else model
    if not isinstance(tuner, SAMTuningModel):
        raise TypeError(
            f"`calibrate_sam` needs a model made by `get_peft_model(model, SAMTuningConfig(...))`, got "
            f"{type(model).__name__} with a {type(tuner).__name__} tuner."
        )
    return tuner


def _to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _check_num_batches(data, num_batches) -> None:
    if num_batches is None:
        return
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f"`num_batches` must be a positive int or None (all batches), got {num_batches!r}.")
    length = len(data) if hasattr(data, "__len__") else None
    if length is not None and num_batches > length and isinstance(data, Iterator):
        raise ValueError(
            f"`num_batches` is {num_batches} but the data holds only {length} batches and can be read once; pass "
            f"num_batches <= {length}, None to use them all, or data that can be read again (a DataLoader, a list)."
        )


def _batches(data, num_batches: int | None) -> Iterator:
    """`num_batches` batches of `data` (all when None). Data that can be read again (a DataLoader, a list) is read
    once more from the start when it runs out, as the reference draws its 599 batches across epochs; a one-shot
    iterator just ends (the caller reports the shortfall)."""
    if num_batches is None:
        yield from data
        return
    left, reusable = num_batches, not isinstance(data, Iterator)  # (no `iter()` here: a DataLoader's starts workers)
    while left:
        yielded = 0
        for batch in itertools.islice(iter(data), left):
            yield batch
            yielded += 1
        left -= yielded
        if not yielded or not reusable:
            return


def calibrate_sam(
    model,
    data: Iterable[Mapping[str, torch.Tensor]] | None = None,
    num_batches: int | None = None,
    *,
    adapter_name: str | None = None,
    force: bool = False,
    max_grad_norm: float | None = None,
    loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor] | None = None,
    show_progress: bool = True,
) -> dict[str, int]:
    """Choose the entries a SAM adapter trains: score them on `data` at the current (pre-trained) weights, keep top-k.

    Runs forward and backward on `num_batches` batches with no optimizer step (the model's train/eval mode is kept,
    the reference implementation calibrates in train mode, dropout on), computes the configured score for every
    targeted entry, selects the budget globally or per tensor, and installs the selection with zero values, so the
    model's outputs are unchanged. Under `torch.distributed` the statistics are all-reduced first, so every rank
    selects the same entries. Parameter objects are kept (resized in place), so it may run after an optimizer was
    built, as long as that optimizer has not stepped.

    Args:
        model (`PeftModel`): a model from `get_peft_model(base, SAMTuningConfig(...))`.
        data (iterable of `dict`, *optional*):
            Batches of model keyword arguments whose output has `.loss` (include `labels`): a DataLoader, a list or a
            generator. Not needed for the `"magnitude"` and `"random"` scores.
        num_batches (`int`, *optional*): how many batches to use; all of them when `None`. More than the data
            holds reads data that can be read again (a DataLoader, a list) once more from the start, as the
            reference drew its 599 batches across epochs; a one-shot iterator must hold enough.
        adapter_name (`str`, *optional*): defaults to the active adapter.
        force (`bool`, *optional*, defaults to `False`): recalibrate an adapter that already has a selection (its
            trained values are reset to zero).
        max_grad_norm (`float`, *optional*): clip each batch's gradient (over the targeted tensors) to this norm before
            accumulating, as the reference code does with 1.0.
        loss_fn (`Callable[[model, batch], torch.Tensor]`, *optional*): the loss to score with, when it is not the
            model's own `.loss` (a class-weighted loss, targets under another key, a `Trainer` with
            `compute_loss_func` or its own `compute_loss`: pass `lambda model, batch: trainer.compute_loss(model,
            batch)`). It gets a copy of each batch, moved to the model's device, and must call `model`.
        show_progress (`bool`, *optional*, defaults to `True`): show a progress bar.

    Returns:
        `dict[str, int]`: the selected count per targeted tensor (also written to the config's `nnz_pattern`).

    Example:

    ```py
    >>> import torch, peft_designspace
    >>> from peft import get_peft_model
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> base = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...                                                 intermediate_size=64, vocab_size=100))
    >>> model = get_peft_model(base, peft_designspace.SAMTuningConfig(budget=0.01, task_type="SEQ_CLS"))
    >>> batches = [{"input_ids": torch.randint(0, 100, (4, 8)), "labels": torch.tensor([0, 1, 0, 1])}] * 2
    >>> counts = peft_designspace.calibrate_sam(model, batches, show_progress=False)
    >>> sum(counts.values()) == model.get_nb_trainable_parameters()[0] - 66  # minus the classifier head
    True
    ```
    """
    for flag, value in (("force", force), ("show_progress", show_progress)):
        if not isinstance(value, bool):  # force="no" would count as True and reset trained values
            raise TypeError(f"`{flag}` must be True or False, got {value!r}.")
    tuner = _tuner_of(model)
    name = adapter_name or tuner.active_adapters[0]
    if name not in tuner.peft_config:
        raise ValueError(f"`adapter_name` must be one of {sorted(tuner.peft_config)}, got {name!r}.")
    config: SAMTuningConfig = tuner.peft_config[name]
    if has_selection(model, name) and not force:
        raise ValueError(
            f"The SAM adapter {name!r} already has a selection (calibrated or loaded); pass `force=True` to choose "
            "again (its trained values are reset to zero)."
        )
    check_calibration_options(max_grad_norm, loss_fn)
    needs_data = config.score in DATA_SCORES
    if needs_data and data is None:
        raise ValueError(f"`score={config.score!r}` needs calibration data: pass batches as `data`.")
    if isinstance(data, Mapping):
        raise TypeError(
            "`data` is one batch (a dict); pass an iterable of batches, such as a DataLoader or a list of dicts."
        )
    if needs_data:
        _check_num_batches(data, num_batches)
    layers = tuner.sam_layers(name)
    targets = [
        (f"{path}.{part}", layer, part)
        for path, layer in layers
        for part in ("weight", "bias")
        if name in getattr(layer, f"samtuning_{part}_values")
    ]
    counts = {key: getattr(layer, f"samtuning_{part}_values")[name].numel() for key, layer, part in targets}
    started = time.perf_counter()

    stats, batches = None, 0
    if needs_data:
        stats, batches = _accumulate(
            model, tuner, name, config, data, num_batches, targets, max_grad_norm, show_progress, loss_fn
        )
    scores = _scores(config, targets, stats, batches)
    check_scores(scores, [key for key, _, _ in targets])
    if config.scope == "global":
        picked = select_top_k(scores, sum(counts.values()), show_progress=show_progress)
    else:
        picked = [select_top_k([s], counts[key])[0] for s, (key, _, _) in zip(scores, targets)]
    del scores, stats
    for (_, layer, part), flat in zip(targets, picked):
        layer.set_selection(name, part, flat)
    config.nnz_pattern = {key: int(flat.numel()) for (key, _, _), flat in zip(targets, picked)}
    tuner._sam_last_calibration = {"batches": batches, "seconds": time.perf_counter() - started}
    return dict(config.nnz_pattern)


def _install_probes(name, config, targets, stats, device):
    """Put a calibration probe on every layer; returns the zero leaves whose gradients are read after backward."""
    hutchinson = config.score == "sam" and config.curvature == "hutchinson"
    anchor = torch.zeros((), device=device, requires_grad=True)
    leaves: dict[str, torch.Tensor] = {}
    by_layer: dict[int, tuple[SAMTuningLayer, dict]] = {}
    for key, layer, part in targets:
        by_layer.setdefault(id(layer), (layer, {}))[1][part] = key
    for layer, parts in by_layer.values():
        if hutchinson and layer.quantization_backend is not None:
            raise ValueError(
                "`curvature='hutchinson'` needs second derivatives through full-precision weights, but "
                f"{type(layer.get_base_layer()).__name__} is quantized; use curvature 'constant' or 'fisher'."
            )
        layer_leaves = {}
        if hutchinson or layer.kind == "norm":
            for part, key in parts.items():
                tensor = getattr(layer.get_base_layer(), part)
                layer_leaves[part] = leaves[key] = torch.zeros(
                    tensor.shape, device=tensor.device, dtype=torch.float32, requires_grad=True
                )
        layer.probe = probe_forward(anchor, {part: stats[key].add for part, key in parts.items()}, layer_leaves)
    return [layer for layer, _ in by_layer.values()], leaves


def _hutchinson_step(loss, leaves, stats, config, generator) -> None:
    """Add this batch's gradient and `config.hutchinson_probes` Rademacher estimates z ⊙ Hz of the diagonal."""
    keys = list(leaves)
    grads = torch.autograd.grad(loss, [leaves[k] for k in keys], create_graph=True, allow_unused=True)
    used = [(k, g) for k, g in zip(keys, grads) if g is not None]
    for key, grad in used:
        stats[key].add(grad.detach())
    for probe in range(config.hutchinson_probes):
        zs = [torch.randint(0, 2, g.shape, generator=generator).to(g.device, g.dtype) * 2 - 1 for _, g in used]
        try:
            hvps = torch.autograd.grad(
                [g for _, g in used],
                [leaves[k] for k, _ in used],
                grad_outputs=zs,
                retain_graph=probe + 1 < config.hutchinson_probes,
                allow_unused=True,
            )
        except RuntimeError as err:
            if "derivative for" not in str(err) or "not implemented" not in str(err):
                raise
            raise ValueError(
                "`curvature='hutchinson'` needs second derivatives through the whole model, but one of its "
                f"operations has none ({err}). Fused attention kernels (SDPA, flash) have none: load the model with "
                "`attn_implementation=\"eager\"`, or use curvature 'constant' or 'fisher'."
            ) from err
        for (key, _), z, hvp in zip(used, zs, hvps):
            if hvp is not None:
                stats[key].curv.addcmul_(z, hvp.detach())


def check_calibration_options(max_grad_norm: float | None, loss_fn: Callable | None) -> None:
    """Raise unless `max_grad_norm` is a positive number (inf: never clip) or None, and `loss_fn` a callable or None.

    Shared by `calibrate_sam` and `trainer_ext.SAMCalibrationCallback`, which checks them when it is built.
    """
    if max_grad_norm is not None and (
        isinstance(max_grad_norm, bool) or not (isinstance(max_grad_norm, (int, float)) and max_grad_norm > 0)
    ):
        raise ValueError(f"`max_grad_norm` must be a positive number or None, got {max_grad_norm!r}.")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be a callable (model, batch) -> loss tensor, or None; got {loss_fn!r}.")


def _batch_loss(model, batch: dict, loss_fn) -> torch.Tensor:
    """The calibration loss of one batch: `loss_fn(model, batch)`, or the model's own `.loss`."""
    if loss_fn is not None:
        loss = loss_fn(model, dict(batch))
        if not (isinstance(loss, torch.Tensor) and loss.numel() == 1):
            raise TypeError(f"`loss_fn` must return the loss as a one-element tensor, got {type(loss).__name__}.")
        return loss.reshape(())
    output = model(**batch)
    loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    if loss is None:
        raise ValueError(
            "The model returned no `.loss` for a calibration batch: include the targets (`labels`) in each batch, "
            "or pass `loss_fn` (e.g. `lambda model, batch: trainer.compute_loss(model, batch)`)."
        )
    return loss


def _accumulate(model, tuner, name, config, data, num_batches, targets, max_grad_norm, show_progress, loss_fn):
    hutchinson = config.score == "sam" and config.curvature == "hutchinson"
    fisher = config.score == "fisher" or (config.score == "sam" and config.curvature == "fisher")
    per_batch = fisher or max_grad_norm is not None
    stats = {}
    for key, layer, part in targets:
        stats[key] = _Accumulator(
            layer.stored_shape(part), layer.samtuning_weight_values[name].device, fisher, per_batch, hutchinson
        )
    device = next(iter(stats.values())).sum.device
    generator = torch.Generator().manual_seed(config.seed)
    grad_flags = {p: p.requires_grad for p in model.parameters()}
    layers, leaves = [], {}
    batches = 0
    try:
        layers, leaves = _install_probes(name, config, targets, stats, device)
        for p in grad_flags:
            p.requires_grad_(False)
        iterator = _batches(data, num_batches)
        total = num_batches or (len(data) if hasattr(data, "__len__") else None)
        for batch in tqdm(iterator, total=total, desc="SAM calibration", unit="batch", disable=not show_progress):
            if not isinstance(batch, Mapping):
                raise TypeError(f"Calibration batches must be dicts of model keyword arguments, got {type(batch)}.")
            with torch.enable_grad():
                loss = _batch_loss(model, _to_device(batch, device), loss_fn)
                if hutchinson:
                    _hutchinson_step(loss, leaves, stats, config, generator)
                else:
                    loss.backward()
            for key, leaf in leaves.items():
                if leaf.grad is not None:
                    stats[key].add(leaf.grad)
                    leaf.grad = None
            scale = 1.0
            if max_grad_norm is not None:
                norm = math.sqrt(sum(float(s.batch.double().pow(2).sum()) for s in stats.values()))
                scale = min(1.0, max_grad_norm / (norm + 1e-6))
            for s in stats.values():
                s.end_batch(scale)
            batches += 1
    finally:
        for layer in layers:
            layer.probe = None
        for p, flag in grad_flags.items():
            p.requires_grad_(flag)
    if num_batches is not None and batches < num_batches:
        raise ValueError(f"`num_batches` is {num_batches} but the data yielded only {batches} batches.")
    if batches == 0:
        raise ValueError("The calibration data yielded no batch.")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        for s in stats.values():
            for tensor in (s.sum, s.sq, s.curv):
                if tensor is not None:
                    torch.distributed.all_reduce(tensor)
        count = torch.tensor([batches], device=device)
        torch.distributed.all_reduce(count)
        batches = int(count.item())
    if config.score == "sam" and config.curvature == "fisher" and batches < 2:
        raise ValueError(
            f"`curvature='fisher'` needs at least 2 calibration batches, got {batches}: with one, h = g² and every "
            "entry scores 1 (the selection would be the first entries in module order). Pass more batches."
        )
    return stats, batches


def _scores(config: SAMTuningConfig, targets, stats, batches: int) -> list[torch.Tensor]:
    scores = []
    generator = torch.Generator().manual_seed(config.seed)
    for key, layer, part in targets:
        if config.score == "random":
            scores.append(
                torch.rand(layer.stored_shape(part), generator=generator).to(layer._base_tensor(part).device)
            )
        elif config.score == "magnitude":
            scores.append(layer._base_tensor(part).detach().reshape(layer.stored_shape(part)).float().abs())
        elif config.score == "fisher":
            scores.append(stats[key].sq)
        elif config.curvature == "constant":  # sam with h = |λ_max|: the squared accumulated gradient
            scores.append(stats[key].sum.pow_(2))
        elif config.curvature == "fisher":  # sam with h = empirical Fisher diagonal: (mean g)² / mean g²
            s = stats[key]
            mean = s.sum.div_(batches)
            scores.append(mean.pow_(2).div_(s.sq.div_(batches).add_(CURVATURE_EPS)))
        else:  # sam with h = |Hutchinson estimate of diag(H)|: (mean g)² / |mean z ⊙ Hz|
            s = stats[key]
            mean = s.sum.div_(batches)
            curvature = s.curv.div_(batches * config.hutchinson_probes).abs_().add_(CURVATURE_EPS)
            scores.append(mean.pow_(2).div_(curvature))
    return scores
