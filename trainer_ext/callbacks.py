"""Trainer callbacks for the methods of peft-designspace."""

from __future__ import annotations

import logging
import os
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from peft_designspace._io import write_json_atomic

logger = logging.getLogger(__name__)

REPORT_FILE = "budget_report.json"


def _find_budget_report(model: Any) -> Any | None:
    """Return the budget report of a (possibly wrapped) PEFT model, or None when it has none."""
    model = getattr(model, "module", model)  # DataParallel / DistributedDataParallel
    tuner = getattr(model, "base_model", None)
    report_fn = getattr(tuner, "budget_report", None)
    if not callable(report_fn):
        return None
    return report_fn()


class BudgetReportCallback(TrainerCallback):
    """Log the budget report of a design-space adapter when training begins, and save it as JSON.

    When the trained model's `base_model` has a `budget_report()` method (the design-space tuner of
    peft-designspace has one), the report table is logged at INFO level through the `trainer_ext.callbacks` logger,
    and `report.to_dict()` is written to `<args.output_dir>/budget_report.json` (through a temporary file and a
    rename, by the main process only). Models without a budget report are left alone.

    Args:
        filename (`str`, *optional*, defaults to `"budget_report.json"`): the file written in `args.output_dir`.
        report_dir (`str`, *optional*): the folder named in the log message instead of `args.output_dir`, when that
            is a temporary folder renamed at the end of the run (as `peft-designspace train` does).

    Attributes:
        report: the last report seen (`None` before training begins or when the model has none).

    Example:

    ```py
    >>> from transformers import Trainer
    >>> from trainer_ext import BudgetReportCallback
    >>> # peft_model: a design-space PeftModel; args: `TrainingArguments`; train: the training dataset
    >>> callbacks = [BudgetReportCallback()]
    >>> trainer = Trainer(model=peft_model, args=args, train_dataset=train, callbacks=callbacks)  # doctest: +SKIP
    >>> trainer.train()  # logs the table, writes <output_dir>/budget_report.json  # doctest: +SKIP
    ```
    """

    def __init__(self, filename: str = REPORT_FILE, report_dir: str | None = None) -> None:
        self.filename = filename
        self.report_dir = report_dir
        self.report: Any | None = None

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        report = _find_budget_report(model)
        if report is None:
            logger.debug("BudgetReportCallback: the model has no budget_report(); nothing to report.")
            return
        self.report = report
        if not state.is_world_process_zero:
            return
        logger.info("Budget report at the start of training:\n%s", report)
        if args.output_dir:
            path = os.path.join(args.output_dir, self.filename)
            write_json_atomic(report.to_dict(), path)
            if self.report_dir is None:
                logger.info("Budget report written to %s", path)
            else:  # args.output_dir is a temporary folder that becomes `report_dir` when the run is complete
                logger.info("Budget report saved; it goes to %s", os.path.join(self.report_dir, self.filename))


__all__ = ["REPORT_FILE", "BudgetReportCallback", "write_json_atomic"]
