"""Training helpers for peft-designspace: offline GLUE loading and scoring, and Trainer callbacks.

This package depends on `peft_designspace` only through the models it is given (never the other way round).

Example:

```py
>>> from trainer_ext import BudgetReportCallback, glue_metric, load_glue_folder, tokenize_glue
>>> data = load_glue_folder("../shared/data/glue/SST-2")
>>> compute_metrics = glue_metric("SST-2")
```
"""

from .callbacks import BudgetReportCallback, write_json_atomic
from .explore import ExploreSettings, evaluate_designs, explore_main, run_exploration
from .glue import (
    TASKS,
    glue_metric,
    load_glue_folder,
    matthews_corrcoef,
    normalize_task,
    split_validation,
    tokenize_glue,
)
from .s3pet_trainer import S3PETSearchTrainer
from .sam_callback import SAMCalibrationCallback

__all__ = [
    "TASKS",
    "BudgetReportCallback",
    "ExploreSettings",
    "S3PETSearchTrainer",
    "SAMCalibrationCallback",
    "evaluate_designs",
    "explore_main",
    "glue_metric",
    "load_glue_folder",
    "matthews_corrcoef",
    "normalize_task",
    "run_exploration",
    "split_validation",
    "tokenize_glue",
    "write_json_atomic",
]
