"""`S3PETSearchTrainer`: the bi-level S3PET search as a `transformers.Trainer` subclass.

Each optimizer step first updates the architecture parameters α on a batch of the *search stream* (a part of the
training set split off with a seed of its own), then the delta weights on the training batch, as in DARTS:

- first order (default): `∇α L_search(w, α)`;
- second order (`second_order=True`): `∇α L_search(w', α) − ξ (∇α L_train(w⁺) − ∇α L_train(w⁻)) / 2ε` with the
  virtual step `w'` one step of the weights' own Adam/AdamW at the current learning rate ξ, from a copy of its state,
  as in the reference code (`virtual_step="adam"`, the default), or `w' = w − ξ ∇w L_train(w, α)` as in original
  DARTS (`virtual_step="sgd"`), and `w± = w ± ε ∇w' L_search`, `ε = 0.01 / ‖∇w' L_search‖`. The model is never copied:
  the virtual weights go through `torch.func.functional_call` over the shared frozen base. Both gradients are
  computed in `trainer_ext/s3pet_gradients.py`.

α has its own AdamW (lr 0.1, no weight decay, linear decay to zero, gradient norm clipped at 2.0 by default), saved
as `arch_optimizer.pt` in checkpoints and restored on resume. The weights use Trainer's optimizer (α left out);
set `TrainingArguments(max_grad_norm=2.0, lr_scheduler_type="linear", warmup_steps=0)` to match the paper.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import warnings
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from peft_designspace._config import _check_type, _fail
from peft_designspace._io import atomic_path

from .s3pet_gradients import (
    adam_virtual_step,
    alpha_only_gradients,
    darts_alpha_gradients,
    sgd_virtual_step,
)

ARCH_FILE = "arch_optimizer.pt"
STRUCTURE_FILE = "s3pet_structure.json"
PLOT_FILE = "s3pet_structure.png"
TRAJECTORY_FILE = "s3pet_search_trajectory.png"


def _split(dataset: Any, fraction: float, seed: int) -> tuple[Any, Any]:
    n = len(dataset)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = int(n * fraction)
    if k < 1 or k >= n:
        raise ValueError(
            f"`search_fraction` {fraction!r} of {n} training rows leaves an empty part; the search stream and the "
            "weight stream both need rows."
        )
    search, train = sorted(order[:k]), sorted(order[k:])
    if hasattr(dataset, "select"):  # datasets.Dataset keeps its columns and formatting
        return dataset.select(train), dataset.select(search)
    return Subset(dataset, train), Subset(dataset, search)


def _check_search_options(
    search_fraction: Any,
    search_seed: Any,
    arch_learning_rate: Any,
    arch_max_grad_norm: Any,
    second_order: Any,
    structure_strategy: Any,
    virtual_step: Any = "adam",
) -> tuple[float, int, float, float | None]:
    """Validate `S3PETSearchTrainer`'s own keywords (TypeError for a wrong type, ValueError for a bad value) and return
    the numbers as plain Python `float`/`int`."""
    _check_type("second_order", second_order, bool, "a bool")
    seed_range = "an int in [-2**63, 2**64)"
    _check_type("search_seed", search_seed, numbers.Integral, seed_range)
    if not -(2**63) <= search_seed < 2**64:  # what `torch.Generator.manual_seed` takes
        _fail("search_seed", search_seed, seed_range)
    allowed = "a finite real number in (0, 1)"
    _check_type("search_fraction", search_fraction, numbers.Real, allowed)
    if not (math.isfinite(search_fraction) and 0 < search_fraction < 1):
        _fail("search_fraction", search_fraction, allowed)
    allowed = "a finite real number > 0"
    _check_type("arch_learning_rate", arch_learning_rate, numbers.Real, allowed)
    if not (math.isfinite(arch_learning_rate) and arch_learning_rate > 0):
        _fail("arch_learning_rate", arch_learning_rate, allowed)
    if arch_max_grad_norm is not None:
        allowed = "None or a finite real number (<= 0 turns clipping off)"
        _check_type("arch_max_grad_norm", arch_max_grad_norm, numbers.Real, allowed)
        if not math.isfinite(arch_max_grad_norm):
            _fail("arch_max_grad_norm", arch_max_grad_norm, allowed)
        arch_max_grad_norm = float(arch_max_grad_norm)
    _check_type("virtual_step", virtual_step, str, "'adam' or 'sgd'")
    if virtual_step not in ("adam", "sgd"):
        _fail("virtual_step", virtual_step, "'adam' or 'sgd'")
    _check_type("structure_strategy", structure_strategy, str, "'greedy' or 'knapsack'")
    if structure_strategy not in ("greedy", "knapsack"):
        _fail("structure_strategy", structure_strategy, "'greedy' or 'knapsack'")
    return float(search_fraction), int(search_seed), float(arch_learning_rate), arch_max_grad_norm


class S3PETSearchTrainer(Trainer):
    """Trainer for the S3PET search: bi-level updates of gates (α) and delta weights, then `derive_structure()`.

    Args:
        search_dataset (`Dataset`, *optional*):
            Rows for the α updates. Default: `search_fraction` of `train_dataset`, split off with `search_seed`.
        search_fraction (`float`, *optional*, defaults to `0.5`): share of the training rows for α (the paper: half).
        search_seed (`int`, *optional*, defaults to `1234`): seed of that split and of the search stream's order,
            independent of the run's seed.
        arch_learning_rate (`float`, *optional*, defaults to `0.1`): α learning rate.
        arch_max_grad_norm (`float`, *optional*, defaults to `2.0`): α gradient-norm clipping; `None` or a value
            `<= 0` turns it off (as `max_grad_norm` does for the weights).
        second_order (`bool`, *optional*, defaults to `False`): the DARTS second-order approximation.
        virtual_step (`str`, *optional*, defaults to `"adam"`): the second-order step's virtual weight update:
            `"adam"` replays the weights' own Adam/AdamW step from a copy of its state, as the reference code does
            (needs a torch Adam/AdamW optimizer, such as Trainer's default); `"sgd"` is original DARTS's
            `w − ξ ∇w L_train`. Unused in first order.
        structure_strategy (`str`, *optional*, defaults to `"greedy"`): `"greedy"` or `"knapsack"`.
        *args, **kwargs: passed to `transformers.Trainer`.

    Example:

    ```py
    >>> from peft import get_peft_model
    >>> from peft_designspace import S3PETConfig
    >>> from trainer_ext import S3PETSearchTrainer
    >>> # base: a transformers model for sequence classification; args: its `TrainingArguments`; train, dev: datasets
    >>> model = get_peft_model(base, S3PETConfig(budget=0.0001, task_type="SEQ_CLS"))  # doctest: +SKIP
    >>> trainer = S3PETSearchTrainer(model=model, args=args, train_dataset=train, eval_dataset=dev)  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP
    >>> structure = trainer.derive_structure()  # doctest: +SKIP
    ```
    """

    def __init__(
        self,
        *args: Any,
        search_dataset: Any = None,
        search_fraction: float = 0.5,
        search_seed: int = 1234,
        arch_learning_rate: float = 0.1,
        arch_max_grad_norm: float | None = 2.0,
        second_order: bool = False,
        structure_strategy: str = "greedy",
        virtual_step: str = "adam",
        **kwargs: Any,
    ) -> None:
        search_fraction, search_seed, arch_learning_rate, arch_max_grad_norm = _check_search_options(
            search_fraction,
            search_seed,
            arch_learning_rate,
            arch_max_grad_norm,
            second_order,
            structure_strategy,
            virtual_step,
        )
        super().__init__(*args, **kwargs)
        self._tuner()  # fail early on a model that is not in S3PET search mode
        _leave_alpha_out_of_ddp(self.model)
        if search_dataset is None:
            if self.train_dataset is None:
                raise ValueError("S3PETSearchTrainer needs a `train_dataset` (or `search_dataset`).")
            if not hasattr(self.train_dataset, "__len__"):
                raise ValueError(
                    f"`train_dataset` ({type(self.train_dataset).__name__}) has no length, so `search_fraction` of "
                    "it cannot be split off for the search stream; pass a sized dataset, or the search rows as "
                    "`search_dataset`."
                )
            self.train_dataset, search_dataset = _split(self.train_dataset, search_fraction, search_seed)
        text = isinstance(search_dataset, (str, bytes))  # has a length, but is no dataset
        if text or not hasattr(search_dataset, "__len__") or len(search_dataset) == 0:
            raise ValueError(
                f"`search_dataset` must be a non-empty dataset with a length (the search stream shuffles it pass "
                f"after pass), got {type(search_dataset).__name__}"
                + (" with 0 rows." if hasattr(search_dataset, "__len__") and not text else ".")
            )
        self.search_dataset = search_dataset
        self.search_seed = search_seed
        self.arch_learning_rate = arch_learning_rate
        self.arch_max_grad_norm = arch_max_grad_norm
        self.second_order = second_order
        self.virtual_step = virtual_step
        self.structure_strategy = structure_strategy
        self.arch_optimizer: torch.optim.Optimizer | None = None
        self.arch_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self._search_iter = None
        self._arch_done_for_step = -1
        # one entry per α step, labelled with the optimizer step it belongs to (Trainer's `global_step` once that step
        # is done, as in `checkpoint-<step>`: 1 for the first)
        self.search_log: list[dict] = []
        self.p_history: list[tuple[int, torch.Tensor]] = []  # (step, keep probabilities) after each α step
        self._logged_upto = 0  # `search_log` entries already summarised in Trainer's logs
        self._logged_structure: set[str] | None = None
        # α at the evaluation with the best `metric_for_best_model` of this run: {"step": int, "alpha": [tensors]}
        self._best: dict | None = None

    # model access -------------------------------------------------------------------------------------------------
    def _tuner(self):
        from peft_designspace import S3PETModel

        model = self.model
        while hasattr(model, "module"):
            model = model.module
        tuner = getattr(model, "base_model", None)
        if not isinstance(tuner, S3PETModel) or not tuner.peft_config[tuner.active_adapters[0]].searching:
            raise TypeError(
                "S3PETSearchTrainer needs a model from `get_peft_model(base, S3PETConfig(...))` in search mode "
                "(no `structure`); train an applied structure with the ordinary Trainer."
            )
        return tuner

    def _alphas(self) -> list[torch.nn.Parameter]:
        return self._tuner().architecture_parameters()

    def call_model_init(self, trial=None):
        model = super().call_model_init(trial)
        _leave_alpha_out_of_ddp(model)  # a model built by `model_init` (at `train()`) is wrapped by DDP too
        return model

    # optimizers ---------------------------------------------------------------------------------------------------
    def create_optimizer(self, model=None):
        alphas = self._alphas()
        for a in alphas:  # keep α out of the weight optimizer
            a.requires_grad_(False)
        try:
            optimizer = super().create_optimizer(model)
        finally:
            for a in alphas:
                a.requires_grad_(True)
        groups = self.arch_optimizer.param_groups if self.arch_optimizer is not None else []
        # a new α optimizer on the first run, and after `model_init` built a new model (new α)
        if [id(p) for group in groups for p in group["params"]] != [id(a) for a in alphas]:
            # the same AdamW kernel as the weights': Trainer's default `optim="adamw_torch_fused"` fuses it
            fused = self.args.optim == "adamw_torch_fused" and all(a.device.type in ("cpu", "cuda") for a in alphas)
            self.arch_optimizer = torch.optim.AdamW(
                alphas, lr=self.arch_learning_rate, weight_decay=0.0, fused=fused or None
            )
        return optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if self.arch_scheduler is None and self.arch_optimizer is not None:
            total = max(1, num_training_steps)
            self.arch_scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.arch_optimizer, lambda step: max(0.0, 1.0 - step / total)
            )
        return scheduler

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.arch_optimizer is not None and self.args.should_save:
            state = {
                "optimizer": self.arch_optimizer.state_dict(),
                "scheduler": self.arch_scheduler.state_dict(),
                "best": self._best,  # a resumed run derives its structure from the same best evaluation
            }
            with atomic_path(os.path.join(output_dir, ARCH_FILE)) as tmp:
                torch.save(state, tmp)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, ARCH_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{checkpoint} has no {ARCH_FILE}, so the α optimizer cannot be restored: the checkpoint was written "
                "with `save_only_model=True` or not by S3PETSearchTrainer. Resume from a full checkpoint, or start a "
                "new search."
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.arch_optimizer.load_state_dict(state["optimizer"])
        self.arch_scheduler.load_state_dict(state["scheduler"])
        self._best = state.get("best")  # absent in checkpoints of earlier versions: then the best checkpoint's α

    # the bi-level step ----------------------------------------------------------------------------------------------
    def _search_batches(self):
        """The search stream: batches of `search_dataset`, pass after pass, each pass shuffled with the seed
        `search_seed + pass`.

        Under torch.distributed, rank `r` of `w` takes batches `r, r + w, r + 2w, …` of that one stream, so the ranks
        see different rows (one α step uses `w` batches), and every rank builds the same stream without talking to
        the others. A resumed run starts at the batch the earlier run would have used next, in whichever pass that
        is. Only the batches a rank uses are collated.
        """
        rank, world = _rank_and_world()
        dataset, collator = self.search_dataset, self.data_collator
        # the columns the model does not take are dropped as in Trainer's own loaders (`remove_unused_columns`)
        if hasattr(dataset, "column_names") and hasattr(dataset, "remove_columns"):  # a datasets.Dataset
            dataset = self._remove_unused_columns(dataset, description="search")
        else:
            collator = self._get_collator_with_removed_columns(collator, description="search")
        size, batch_size = len(dataset), self._train_batch_size
        per_pass = size // batch_size if size > batch_size else 1  # a last short batch is dropped

        def index_batches():
            consumed = self.state.global_step * world * self._search_batches_per_step()  # a resumed run skips them
            epoch, offset = divmod(consumed, per_pass)
            while True:
                seed = (self.search_seed + epoch) % 2**64  # torch wraps negative seeds the same way
                order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
                for b in range(offset, per_pass):
                    yield order[b * batch_size : (b + 1) * batch_size].tolist()
                epoch, offset = epoch + 1, 0

        for indices in islice(index_batches(), rank, None, world):
            yield collator([dataset[i] for i in indices])

    def _next_search_inputs(self) -> dict:
        if self._search_iter is None:
            self._search_iter = self._search_batches()
        return self._prepare_inputs(next(self._search_iter))

    def _loss(self, model, inputs: dict, params: dict | None = None) -> torch.Tensor:
        """`compute_loss` on a copy of `inputs` (it pops `labels` under label smoothing or a `compute_loss_func`),
        with the named tensors `params` in place of the model's own when given, so every pass of the second-order
        step computes the same loss as the weight step."""
        if params is None:
            return self.compute_loss(model, dict(inputs))
        wrapper = _LossOf(self, model)
        return torch.func.functional_call(wrapper, {f"model.{n}": p for n, p in params.items()}, (inputs,))

    def _search_batches_per_step(self) -> int:
        """Search batches per α step (per rank): `gradient_accumulation_steps` in first order, as many as a full weight
        step's micro-batches, so both streams see the same number of rows per step; one in second order, whose
        unrolled step is defined on the one training batch at hand.

        An epoch's last step may have fewer micro-batches (when the epoch's batch count is not a multiple of
        `gradient_accumulation_steps`); its α step still takes the full count. A fixed count per step is what lets a
        resumed run skip exactly the search batches already used."""
        return 1 if self.second_order else max(1, self.args.gradient_accumulation_steps)

    def _arch_gradients(self, model, train_inputs: dict, loss_scale: float = 1.0) -> list[torch.Tensor]:
        alphas = self._alphas()
        if not self.second_order:  # the mean over the step's search batches, one pass each
            count, total = self._search_batches_per_step(), None
            for _ in range(count):
                search_inputs = self._next_search_inputs()
                loss_fn = functools.partial(self._loss, model, search_inputs)
                grads = alpha_only_gradients(model, alphas, loss_fn, loss_scale)
                total = grads if total is None else [t + g for t, g in zip(total, grads)]
            return [t / count for t in total]
        search_inputs = self._next_search_inputs()
        xi = self.lr_scheduler.get_last_lr()[0] if self.lr_scheduler is not None else self.args.learning_rate
        step = adam_virtual_step(self.optimizer) if self.virtual_step == "adam" else sgd_virtual_step
        return darts_alpha_gradients(
            model,
            alphas,
            lambda inputs, params: self._loss(model, inputs, params),
            train_inputs,
            search_inputs,
            xi,
            loss_scale,
            virtual_step=step,
        )

    def _loss_scale(self) -> float:
        """The weights' fp16 loss scale (accelerate's `GradScaler`), which α's passes use too; 1 without one."""
        scaler = getattr(self.accelerator, "scaler", None)
        return float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0

    def _arch_step(self, model, train_inputs: dict) -> None:
        # α's passes bypass the DDP wrapper: its reducer expects one `backward()` per forward and α is reduced here
        model = self.accelerator.unwrap_model(model)
        if self._logged_structure is None:  # this run's first α step
            _check_checkpointing(model, self.second_order)
            self._logged_structure = self._greedy_keys()  # the structure before any α step, for the logs
        model.train()
        grads = self._arch_gradients(model, train_inputs, self._loss_scale())
        _, world = _rank_and_world()
        if world > 1:  # `torch.autograd.grad` bypasses DDP's hooks: average α's gradients by hand, in one message
            flat = torch.cat([g.reshape(-1) for g in grads])
            torch.distributed.all_reduce(flat)
            flat.div_(world)
            grads = [part.view_as(g) for part, g in zip(flat.split([g.numel() for g in grads]), grads)]
        norm = torch.sqrt(sum((g.detach() ** 2).sum() for g in grads))
        # the optimizer step this α step belongs to: Trainer counts it in `global_step` only once it is done
        step = self.state.global_step + 1
        if not torch.isfinite(norm):  # an fp16 overflow at this loss scale: skip α's step, as GradScaler skips w's
            self.search_log.append({"step": step, "alpha_step_skipped": True})
            return
        clip = self.arch_max_grad_norm
        scale = min(1.0, clip / (float(norm) + 1e-6)) if clip is not None and clip > 0 else 1.0
        for a, g in zip(self._alphas(), grads):
            a.grad = g.detach() * scale
        lr = self.arch_optimizer.param_groups[0]["lr"]  # the rate of this step (the scheduler then moves on)
        self.arch_optimizer.step()
        self.arch_optimizer.zero_grad(set_to_none=True)
        self.arch_scheduler.step()
        last = self._tuner()._s3pet[self._tuner().active_adapters[0]].get("last", {})
        self.search_log.append({"step": step, "alpha_grad_norm": float(norm), "alpha_learning_rate": lr, **last})
        p, _, _ = self._tuner().keep_probabilities()
        self.p_history.append((step, p.detach().float().cpu()))

    def train(self, *args: Any, **kwargs: Any):
        # where this call's α steps start in the logs: a retry of `auto_find_batch_size` drops its failed attempt's
        self._run_marks = (len(self.search_log), len(self.p_history))
        return super().train(*args, **kwargs)

    def _inner_training_loop(self, *args: Any, **kwargs: Any):
        # Trainer runs this once per `train()`, and again for each retry of `auto_find_batch_size` after an
        # out-of-memory error (with a smaller batch). Each run logs its structure changes from its own start; like
        # Trainer's own scheduler, α's is rebuilt for the run's length (its optimizer is kept unless the model
        # changed), and the search stream restarts where this run (or the checkpoint it resumes) stands, in batches
        # of the run's size
        logs, history = getattr(self, "_run_marks", (len(self.search_log), len(self.p_history)))
        del self.search_log[logs:], self.p_history[history:]  # a failed attempt's α steps (step numbers restart)
        self._logged_structure = None
        self._logged_upto = len(self.search_log)
        self.arch_scheduler = None
        self._search_iter = None
        self._arch_done_for_step = -1
        self._best = None  # a new run has its own best evaluation (a resumed one reads it from its checkpoint)
        return super()._inner_training_loop(*args, **kwargs)

    def _determine_best_metric(self, metrics: dict[str, float], trial: Any) -> bool:
        # α is kept at every evaluation that improves `metric_for_best_model`, as the paper saves the search at each
        # one: the structure then comes from the best evaluation whatever the saving schedule (with `save_steps` not a
        # multiple of `eval_steps`, Trainer's `best_model_checkpoint` can name an older checkpoint, or none)
        # (and, as the reference's `>=`, at one that ties it: the latest of equal evaluations wins, where Trainer's
        # own best checkpoint keeps the first)
        new_best = super()._determine_best_metric(metrics=metrics, trial=trial)
        if new_best or self._ties_best(metrics):
            self._best = {
                "step": self.state.global_step,
                "alpha": [a.detach().float().cpu().clone() for a in self._alphas()],
            }
        return new_best

    def _ties_best(self, metrics: dict[str, float]) -> bool:
        name = self.args.metric_for_best_model
        if name is None or self.state.best_metric is None:
            return False
        value = metrics.get(name if name.startswith("eval_") else f"eval_{name}")
        return value is not None and float(value) == float(self.state.best_metric)

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self._arch_done_for_step != self.state.global_step:  # once per optimizer step, not per micro-batch
            self._arch_done_for_step = self.state.global_step
            self._arch_step(model, self._prepare_inputs(inputs))
        alphas = self._alphas()
        for a in alphas:  # the weight step must not touch α (nor let α's gradient into Trainer's clipping)
            a.requires_grad_(False)
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        finally:
            for a in alphas:
                a.requires_grad_(True)

    # logging --------------------------------------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Trainer's `log`, with the search's own figures added to the training logs (so every `report_to` gets them).

        - `alpha_grad_norm`: the mean α-gradient norm (before clipping) over the steps since the last log;
        - `alpha_learning_rate`: the learning rate of the last α step (as `learning_rate` is the weights');
        - `s3pet_shift`, `s3pet_shift_residual`: the last budget shift `b` and the largest relative residual of its
          solve since the last log;
        - `s3pet_structure_changes`: how many candidates entered or left the structure (greedy rule, live α) since the
          last log; it falls to 0 as the search settles;
        - `alpha_steps_skipped`: α steps skipped since the last log because their gradient overflowed at the fp16
          loss scale (only logged when there were some).
        """
        recent = self.search_log[self._logged_upto :]
        if "loss" in logs and recent:
            self._logged_upto = len(self.search_log)
            skipped = [e for e in recent if e.get("alpha_step_skipped")]
            recent = [e for e in recent if not e.get("alpha_step_skipped")]
            if skipped:
                logs["alpha_steps_skipped"] = len(skipped)
            if recent:
                logs["alpha_grad_norm"] = sum(e["alpha_grad_norm"] for e in recent) / len(recent)
            if recent:  # the rate the last α step used, as Trainer's `learning_rate` is the weights' last one
                logs["alpha_learning_rate"] = recent[-1]["alpha_learning_rate"]
            if recent and "shift" in recent[-1]:
                logs["s3pet_shift"] = recent[-1]["shift"]
                logs["s3pet_shift_residual"] = max(e.get("residual", 0.0) for e in recent)
            kept = self._greedy_keys()
            if self._logged_structure is not None:
                logs["s3pet_structure_changes"] = len(kept ^ self._logged_structure)
            self._logged_structure = kept
        super().log(logs, start_time)

    def _greedy_keys(self) -> set[str]:
        structure = self._tuner().derive_structure(strategy="greedy")
        return _kept_keys(structure)

    # result ---------------------------------------------------------------------------------------------------------
    def _best_alphas(self) -> list[torch.Tensor] | None:
        """α at the best evaluation of the run, else as saved in the best checkpoint, else `None` (the live α).

        The best checkpoint is read only when the run kept no α of its own (a trainer that did not run the search,
        or one resumed from a checkpoint of an earlier version). PEFT saves the adapter named `"default"` at the top
        of the checkpoint and any other one in a subfolder named after it. A checkpoint without that file, or without
        α in it, is reported with a warning.
        """
        if self._best is not None:
            return self._best["alpha"]
        checkpoint = self.state.best_model_checkpoint
        if not checkpoint:
            return None
        found, problem = self._saved_alphas(checkpoint)
        if problem:
            warnings.warn(f"{problem}, so the structure is derived from the live α instead.", stacklevel=3)
        return found

    def _saved_alphas(self, checkpoint: str) -> tuple[list[torch.Tensor] | None, str | None]:
        """`(α, None)` as saved in `checkpoint`, or `(None, why not)`."""
        from safetensors.torch import load_file

        tuner = self._tuner()
        name = tuner.active_adapters[0]
        folder = checkpoint if name == "default" else os.path.join(checkpoint, name)
        path = os.path.join(folder, "adapter_model.safetensors")
        if not os.path.isfile(path):
            return None, f"The best checkpoint has no {path} (adapter {name!r})"
        weights = load_file(path)
        found = []
        for layer_path, _ in _layer_paths(tuner, name):
            key = f"base_model.model.{layer_path}.s3pet_alpha"
            if key not in weights:
                return None, f"{path} holds no α ({key!r} is missing)"
            found.append(weights[key])
        return found, None

    def _source_of(self, alphas: list[torch.Tensor] | None) -> tuple[int | None, str | None]:
        """`(step, checkpoint)` the α of `_best_alphas` belongs to: the checkpoint only when one holds that step."""
        if alphas is None:
            return None, None
        checkpoint = self.state.best_model_checkpoint
        saved_step = _checkpoint_step(checkpoint)
        if self._best is None:
            return saved_step, checkpoint
        step = self._best["step"]
        # Trainer's best checkpoint, or for a later evaluation that tied Trainer's best (which keeps the first) its
        # own folder; either only when it holds this α: a folder of that name left by an earlier run in the same
        # output folder holds other α, and Trainer names it as the best when this run did not save that step
        folder = (
            checkpoint if saved_step == step else os.path.join(self.args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")
        )
        saved, _ = self._saved_alphas(folder) if folder and os.path.isdir(folder) else (None, None)
        same = saved is not None and all(torch.equal(a.float(), b.float()) for a, b in zip(saved, alphas))
        return step, folder if same else None

    def derive_structure(self, strategy: str | None = None, from_best: bool = True, save: bool = True) -> dict:
        """Discretise the search: α from the best evaluation (by `metric_for_best_model`) when there is one.

        The structure records where its α comes from: `from_step`, the optimizer step of the best evaluation (`None`
        for the final, live α), and `from_checkpoint`, the checkpoint folder saved at that step (`None` when that
        step was not saved: α is kept in memory at every evaluation that improves or ties the metric, and in the
        checkpoints written after it, so the saving schedule does not matter).

        The structure is also written to `args.output_dir/s3pet_structure.json`, with a heatmap
        (`s3pet_structure.png`) of the kept modules and of every candidate's keep probability, and a heatmap of every
        candidate's keep probability after each α step of this trainer's runs (`s3pet_search_trajectory.png`, from
        `p_history`, its columns labelled with the optimizer steps as Trainer counts them, from 1; a resumed run's
        history starts at the resume). A figure this call cannot write (no α step recorded yet, or no matplotlib) is
        removed from that folder with a warning, so that no other search's figure is left beside this structure.
        """
        for name, value in (("from_best", from_best), ("save", save)):
            if not isinstance(value, bool):  # "no" would count as True
                raise TypeError(f"`{name}` must be True or False, got {value!r}.")
        tuner = self._tuner()
        alphas = self._best_alphas() if from_best else None
        strategy = self.structure_strategy if strategy is None else strategy  # "" is refused below, not the default
        structure = tuner.derive_structure(strategy=strategy, alpha=alphas)
        structure["from_step"], structure["from_checkpoint"] = self._source_of(alphas)
        if save and self.args.should_save:
            from peft_designspace.s3pet import save_structure
            from peft_designspace.s3pet.plot import plot_structure, plot_trajectory

            out = Path(self.args.output_dir)
            save_structure(structure, out / STRUCTURE_FILE)
            p, _, _ = tuner.keep_probabilities(alpha=alphas if alphas is not None else tuner.architecture_parameters())
            everything = [{**c.to_dict(), "p": float(v)} for c, v in zip(tuner.candidates(), p.tolist())]
            written = set()
            try:
                plot_structure(structure, out / PLOT_FILE, everything)
                written.add(PLOT_FILE)
                if self.p_history:
                    kept = _kept_keys(structure)
                    steps, history = zip(*((step, p.tolist()) for step, p in self.p_history))
                    frame = [c.to_dict() for c in tuner.candidates()]
                    plot_trajectory(list(history), list(steps), frame, kept, out / TRAJECTORY_FILE)
                    written.add(TRAJECTORY_FILE)
                reason = "no α step recorded by this trainer, so no search trajectory to plot"
            except ImportError:  # matplotlib is optional (`pip install peft-designspace[plots]`)
                reason = "matplotlib is not installed (`pip install peft-designspace[plots]`), so no figures"
            except BaseException as error:  # a full disk, Ctrl-C: no earlier search's figure stays beside this one
                unwritten = [n for n in (PLOT_FILE, TRAJECTORY_FILE) if n not in written]
                _remove_stale_figures(out, unwritten, f"writing the figures failed ({type(error).__name__})")
                raise
            # a figure not rewritten here belongs to an earlier search: it must not sit next to this structure
            _remove_stale_figures(out, [n for n in (PLOT_FILE, TRAJECTORY_FILE) if n not in written], reason)
        return structure


class _LossOf(torch.nn.Module):
    """`trainer.compute_loss(model, inputs)` as a module's forward, for `torch.func.functional_call` (which swaps the
    parameters of the module it calls, here `model`'s under the prefix `model.`)."""

    def __init__(self, trainer: Trainer, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self._trainer = trainer

    def forward(self, inputs: dict) -> torch.Tensor:
        return self._trainer.compute_loss(self.model, dict(inputs))


def _check_checkpointing(model: torch.nn.Module, second_order: bool) -> None:
    """Raise if `model` checkpoints activations and the search is second-order: its virtual weights are swapped in by
    `torch.func.functional_call` for the forward only, so a replay during the backward would see the real weights
    (torch stops it with a `CheckpointError`). Reentrant checkpointing, which no search can use, is refused by the
    model itself at every training forward that trains α (`S3PETModel._check_checkpointing`)."""
    if not second_order:
        return
    from peft_designspace.s3pet.model import checkpointed_modules

    checkpointed, _ = checkpointed_modules(model)
    if checkpointed:
        raise ValueError(
            f"`second_order=True` cannot run under activation checkpointing (used by {checkpointed[0]!r} and "
            f"{len(checkpointed) - 1} more modules): the virtual step's weights are swapped in for the forward only, "
            "and the replay in the backward would use the real ones. Turn checkpointing off "
            "(`TrainingArguments(gradient_checkpointing=False)`) or use the first-order search."
        )


def _remove_stale_figures(folder: Path, names: list[str], reason: str) -> None:
    """Delete the figures `names` in `folder` (left by an earlier search) and say so in one warning."""
    removed = []
    for name in names:
        try:
            (folder / name).unlink()
        except FileNotFoundError:
            continue
        removed.append(name)
    if removed:
        warnings.warn(
            f"{reason}: removed {', '.join(removed)} from {folder}, left by an earlier search.",
            stacklevel=3,
        )


def _kept_keys(structure: dict) -> set[str]:
    from peft_designspace.s3pet.space import candidate_key

    return {candidate_key(m["path"], m["type"]) for m in structure["modules"]}


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _layer_paths(tuner, adapter_name: str) -> list[tuple[str, Any]]:
    layers = tuner._layers_in_order(adapter_name)
    paths = {id(m): p for p, m in tuner.model.named_modules()}
    return [(paths[id(layer)], layer) for layer in layers]


def _leave_alpha_out_of_ddp(model: torch.nn.Module) -> None:
    """Tell DDP to leave `model`'s α alone: α gets no gradient in the weight step (which DDP would wait for without
    `find_unused_parameters`); its gradients are averaged by hand in `_arch_step`."""
    tuner = getattr(model, "base_model", None)
    if not hasattr(tuner, "architecture_parameters"):
        return  # not an S3PET model: `_tuner()` says so when the search needs it
    alpha_ids = {id(a) for a in tuner.architecture_parameters()}
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        model, [n for n, p in model.named_parameters() if id(p) in alpha_ids]
    )


def _checkpoint_step(folder: str | None) -> int | None:
    """The step of a `checkpoint-<step>` folder (`None` for no folder or another name)."""
    name = os.path.basename(os.path.normpath(folder)) if folder else ""
    prefix, _, step = name.rpartition("-")
    return int(step) if prefix == "checkpoint" and step.isdigit() else None
