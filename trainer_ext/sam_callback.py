"""`SAMCalibrationCallback`: runs `peft_designspace.calibrate_sam` when `Trainer` starts training."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

logger = logging.getLogger(__name__)


def _unwrap(model: Any) -> Any:
    while hasattr(model, "module"):  # DataParallel / DistributedDataParallel / accelerate wrappers
        model = model.module
    return model


class SAMCalibrationCallback(TrainerCallback):
    """Calibrate every uncalibrated SAM adapter of the model in `on_train_begin`, before the first optimizer step.

    `Trainer` builds its optimizer before `on_train_begin`; calibration keeps the parameter objects (it resizes the
    values in place and the optimizer has no state yet), so the optimizer trains the selected entries. Adapters that
    already have a selection (calibrated earlier, or loaded when resuming from a checkpoint) are left alone.

    With `scope="global"` the per-tensor sizes change at calibration, which DistributedDataParallel cannot follow
    (its buckets are fixed when it wraps the model): under DDP either use `scope="per_tensor"` or call
    `calibrate_sam` yourself before creating the `Trainer`.

    Args:
        num_batches (`int`, *optional*, defaults to `64`):
            Calibration batches (a shorter dataloader is read again from the start, as the reference did).
        dataloader (iterable of `dict`, *optional*):
            Calibration batches; defaults to Trainer's training dataloader.
        max_grad_norm (`float`, *optional*): per-batch gradient clipping before accumulation (see `calibrate_sam`).
        loss_fn (`Callable[[model, batch], torch.Tensor]`, *optional*): the loss to score with (see `calibrate_sam`);
            the model's own `.loss` when unset. A `Trainer` that trains another loss (`compute_loss_func`, label
            smoothing, its own `compute_loss`, targets under another key) should score with it too; `for_trainer`
            sets it to the trainer's `compute_loss`.

    Example:

    ```py
    >>> from transformers import Trainer
    >>> from trainer_ext import SAMCalibrationCallback
    >>> # model: a PeftModel with a SAM adapter; args: `TrainingArguments`; train: the training dataset
    >>> callbacks = [SAMCalibrationCallback(32)]
    >>> trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=callbacks)  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP
    >>> # scoring with the loss the Trainer trains (e.g. with `compute_loss_func`):
    >>> trainer = Trainer(model=model, args=args, train_dataset=train, compute_loss_func=my_loss)  # doctest: +SKIP
    >>> trainer.add_callback(SAMCalibrationCallback.for_trainer(trainer, 32))  # doctest: +SKIP
    ```
    """

    def __init__(
        self,
        num_batches: int = 64,
        dataloader: Any = None,
        max_grad_norm: float | None = None,
        loss_fn: Callable[[Any, dict], Any] | None = None,
    ) -> None:
        if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
            raise ValueError(f"`num_batches` must be a positive int, got {num_batches!r}.")
        from peft_designspace.samtuning.calibration import check_calibration_options

        check_calibration_options(max_grad_norm, loss_fn)
        if dataloader is not None and not isinstance(dataloader, Iterable):
            raise TypeError(
                f"`dataloader` must be an iterable of batches (e.g. a DataLoader) or None, got {dataloader!r}."
            )
        self.num_batches = num_batches
        self.dataloader = dataloader
        self.max_grad_norm = max_grad_norm
        self.loss_fn = loss_fn

    @classmethod
    def for_trainer(cls, trainer: Any, num_batches: int = 64, **kwargs: Any) -> SAMCalibrationCallback:
        """A callback that scores with `trainer.compute_loss`, the loss the trainer trains; add it with
        `trainer.add_callback(...)`. Other arguments as for the constructor."""
        return cls(num_batches, loss_fn=lambda model, batch: trainer.compute_loss(model, batch), **kwargs)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        from peft_designspace import SAMTuningConfig, calibrate_sam
        from peft_designspace.samtuning import has_selection

        wrapped = kwargs.get("model")
        model = _unwrap(wrapped)
        configs = getattr(model, "peft_config", {})
        pending = [n for n, c in configs.items() if isinstance(c, SAMTuningConfig) and not has_selection(model, n)]
        if not pending:
            return
        optimizer = kwargs.get("optimizer")
        if optimizer is not None and any(len(s) for s in getattr(optimizer, "state", {}).values()):
            raise RuntimeError(
                "SAMCalibrationCallback runs before the first optimizer step, but the optimizer already has state; "
                "call `calibrate_sam` before creating the Trainer instead."
            )
        is_ddp = type(wrapped).__name__ == "DistributedDataParallel"
        if is_ddp and any(configs[n].scope == "global" for n in pending):
            raise RuntimeError(
                "A global-scope SAM selection changes parameter sizes, which DistributedDataParallel cannot follow "
                "once it wrapped the model: call `calibrate_sam` before creating the Trainer, or use "
                "`scope='per_tensor'`."
            )
        data = self.dataloader if self.dataloader is not None else kwargs.get("train_dataloader")
        if data is None:
            raise ValueError("SAMCalibrationCallback found no calibration data: pass `dataloader=`.")
        num_batches = self.num_batches  # a shorter DataLoader is read again from the start, as the reference did
        # in train mode (dropout on), as the reference calibrated: Trainer itself switches to train mode only in its
        # first `training_step`, after this hook, and a model from `from_pretrained` is in eval mode
        was_training = model.training
        model.train()
        try:
            for name in pending:
                counts = calibrate_sam(
                    model,
                    data,
                    num_batches,
                    adapter_name=name,
                    max_grad_norm=self.max_grad_norm,
                    loss_fn=self.loss_fn,
                    show_progress=not args.disable_tqdm,
                )
                logger.info(
                    "SAM adapter %r calibrated on %d batches: %d entries.", name, num_batches, sum(counts.values())
                )
        finally:
            model.train(was_training)
