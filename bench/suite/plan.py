"""Experiments of the suite: one folder each under `experiments/`, resolved against a backbone and a budget.

An experiment folder holds
- `adapter_config.json`: the PEFT config as PEFT writes it (`peft_type` plus fields). A field set to `"auto"` is solved
  for the experiment's budget on the backbone in use, so one folder serves MiniLM and SmolLM2 alike:
  LoRA and SHiRA `r`, prefix tuning `num_virtual_tokens`, Supertuning `sparsity`, and `budget` of the pack's methods
  (S4, SAM, S3PET: an absolute count). Full fine-tuning has no adapter config.
- `training_params.json` (optional): overrides of `default_training_params.json`, plus the experiment's own keys:
  `budget` (a fraction of the backbone's parameters), `full_finetune`, `s3pet_structure` (`"search"` or `"random"`)
  and `label` (the name in the report).

```
load_experiments(root, patterns)     ──► [Experiment]   (sorted by name)
resolve(experiment, base_model)      ──► Resolved (the PEFT config kwargs with "auto" solved, the realised count)
```
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXPERIMENTS_DIR = HERE / "experiments"
DEFAULTS_FILE = HERE / "default_training_params.json"
OUR_TYPES = ("DESIGNSPACE", "SAMTUNING", "S3PET")
# peft_type -> the field an "auto" value may stand for (the pack's methods all take a `budget` count).
AUTO_FIELDS = {
    "LORA": "r",
    "SHIRA": "r",
    "PREFIX_TUNING": "num_virtual_tokens",
    "SUPERTUNING": "sparsity",
    **dict.fromkeys(OUR_TYPES, "budget"),
}
EXPERIMENT_KEYS = ("budget", "full_finetune", "s3pet_structure", "label", "family")
# Training params that say which runs to make or how many cores to use, not how a run trains: left out of the settings
# a result was made with (`settings_of`), so e.g. `--workers` (which sets num_threads) keeps cached results valid.
NOT_SETTINGS = ("lr_multipliers", "seeds", "num_threads")


class ExperimentError(ValueError):
    """An experiment folder is malformed; the message names the folder and the field."""


@dataclass
class Experiment:
    """One experiment folder: `name` is its path under `experiments/` (e.g. `lora/budget-0.5pct`)."""

    name: str
    adapter_config: dict | None
    overrides: dict = field(default_factory=dict)

    @property
    def budget(self) -> float | None:
        return self.overrides.get("budget")

    @property
    def full_finetune(self) -> bool:
        return bool(self.overrides.get("full_finetune"))

    @property
    def peft_type(self) -> str:
        return "FULL" if self.adapter_config is None else self.adapter_config["peft_type"]

    @property
    def ours(self) -> bool:
        return self.peft_type in OUR_TYPES

    @property
    def label(self) -> str:
        return self.overrides.get("label", self.name)

    @property
    def family(self) -> str:
        """The method without its budget (`lora`, `sam-fisher`, ...): rows of the speed table and plot colours."""
        return self.overrides.get("family", self.name.split("/")[0])

    def training_params(self, defaults: dict) -> dict:
        """`defaults` updated with this experiment's training overrides (its own keys left out)."""
        params = dict(defaults)
        params.update({k: v for k, v in self.overrides.items() if k not in EXPERIMENT_KEYS})
        return params


def settings_of(training_params: dict, config: dict | None) -> dict:
    """What a run's result depends on besides its learning rate and seed: its training params and resolved config."""
    params = {k: v for k, v in training_params.items() if k not in NOT_SETTINGS}
    return {"training_params": params, "config": config}


def settings_key(settings: dict) -> str:
    """A short hash of `settings` (from `settings_of`): equal settings, equal keys."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def settings_diff(old: dict, new: dict) -> list[str]:
    """The fields that differ between two `settings_of` dicts, as `name old → new` (config fields as `config.name`)."""
    changes = []
    for part, prefix in (("training_params", ""), ("config", "config.")):
        before, after = old.get(part) or {}, new.get(part) or {}
        for key in sorted(set(before) | set(after)):
            if before.get(key) != after.get(key):
                changes.append(f"{prefix}{key} {json.dumps(before.get(key))} → {json.dumps(after.get(key))}")
    return changes


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ExperimentError(f"{path} is not valid JSON: {err}.") from err
    if not isinstance(value, dict):
        raise ExperimentError(f"{path} must hold a JSON object, got {type(value).__name__}.")
    return value


def load_defaults(path: Path = DEFAULTS_FILE) -> dict:
    """The default training parameters (comments under keys starting with `_` are dropped)."""
    return {k: v for k, v in _read_json(path).items() if not k.startswith("_")}


def task_params(defaults: dict, task: str) -> dict:
    """`defaults` with the task's own overrides (`per_task`) applied."""
    params = {k: v for k, v in defaults.items() if k != "per_task"}
    params.update(defaults.get("per_task", {}).get(task, {}))
    return params


def load_experiment(folder: Path, root: Path = EXPERIMENTS_DIR) -> Experiment:
    """Read and check one experiment folder."""
    name = folder.relative_to(root).as_posix()
    config_file, params_file = folder / "adapter_config.json", folder / "training_params.json"
    config = _read_json(config_file) if config_file.is_file() else None
    overrides = _read_json(params_file) if params_file.is_file() else {}
    overrides = {k: v for k, v in overrides.items() if not k.startswith("_")}
    experiment = Experiment(name, config, overrides)
    if config is None and not experiment.full_finetune:
        raise ExperimentError(
            f"{folder}: no adapter_config.json, and training_params.json does not set full_finetune."
        )
    if config is not None:
        if "peft_type" not in config:
            raise ExperimentError(f"{config_file}: `peft_type` is missing.")
        auto = [k for k, v in config.items() if v == "auto"]
        allowed = AUTO_FIELDS.get(config["peft_type"])
        if any(k != allowed for k in auto):
            raise ExperimentError(
                f'{config_file}: `"auto"` is allowed only for `{allowed}` with peft_type {config["peft_type"]}, '
                f"found it for {auto}."
            )
        if auto and not (isinstance(experiment.budget, (int, float)) and 0 < experiment.budget < 1):
            raise ExperimentError(
                f"{folder}: `budget` in training_params.json must be a fraction in (0, 1) of the backbone's "
                f'parameters when a field is "auto", got {experiment.budget!r}.'
            )
    structure = experiment.overrides.get("s3pet_structure")
    if structure not in (None, "search", "random"):
        raise ExperimentError(f"{folder}: `s3pet_structure` must be 'search' or 'random', got {structure!r}.")
    return experiment


def load_experiments(root: Path = EXPERIMENTS_DIR, patterns: list[str] | None = None) -> list[Experiment]:
    """Every experiment folder under `root` whose name matches one of the glob `patterns` (all when None).

    Raises:
        ExperimentError: if a pattern matches nothing, or a folder is malformed.
    """
    folders = sorted({p.parent for name in ("adapter_config.json", "training_params.json") for p in root.rglob(name)})
    experiments = [load_experiment(f, root) for f in folders]
    if not patterns:
        return experiments
    chosen = [e for e in experiments if any(fnmatch.fnmatch(e.name, p) for p in patterns)]
    unmatched = [p for p in patterns if not any(fnmatch.fnmatch(e.name, p) for e in experiments)]
    if unmatched:
        names = ", ".join(e.name for e in experiments)
        raise ExperimentError(f"`experiments` pattern(s) {unmatched} match no experiment; there are: {names}.")
    return chosen


# resolving "auto"
def head_names(model) -> list[str]:
    """Names of the classification head's parameters (`classifier`/`score`), counted apart from every method."""
    return [n for n, _ in model.named_parameters() if n.split(".")[0] in ("classifier", "score")]


def backbone_params(model) -> int:
    """Parameters of the base model without its classification head: what budget fractions refer to."""
    heads = set(head_names(model))
    return sum(p.numel() for n, p in model.named_parameters() if n not in heads)


def method_params(model) -> tuple[int, int]:
    """`(method, head)` trainable counts of a PEFT model: the head copies (`modules_to_save`) apart."""
    method = head = 0
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if ".modules_to_save." in name or name.split(".")[-2:-1] in (["classifier"], ["score"]):
            head += param.numel()
        elif ".original_module." not in name:
            method += param.numel()
    return method, head


def build_config(config: dict, task_type: str = "SEQ_CLS"):
    """A PEFT config object of `config` (a dict as in `adapter_config.json`, no `"auto"` left)."""
    from peft import PEFT_TYPE_TO_CONFIG_MAPPING

    import peft_designspace  # noqa: F401  (registers DESIGNSPACE, SAMTUNING and S3PET)

    kwargs = {k: v for k, v in config.items() if k != "peft_type"}
    kwargs.setdefault("task_type", task_type)
    return PEFT_TYPE_TO_CONFIG_MAPPING[config["peft_type"]](**kwargs)


def count_with(base, config: dict) -> int:
    """Trainable method parameters of `config` on a copy of `base` (the head apart)."""
    from peft import get_peft_model

    model = get_peft_model(copy.deepcopy(base), build_config(config))
    return method_params(model)[0]


@dataclass
class Resolved:
    """An experiment made concrete on one backbone."""

    config: dict | None  # None for full fine-tuning
    target: int | None  # the budget as a count (None when the method has no budget)
    backbone_params: int
    count: int | None = None  # trainable method parameters of `config` on this backbone (head apart)


def resolve(experiment: Experiment, base) -> Resolved:
    """Solve the `"auto"` field of `experiment` for its budget on `base` (a 2-label classifier, left untouched).

    Raises:
        ValueError: when the method cannot be built at that budget (e.g. S4 below its smallest feasible design).
    """
    total = backbone_params(base)
    if experiment.adapter_config is None:
        return Resolved(None, None, total, total)
    config = dict(experiment.adapter_config)
    auto = [k for k, v in config.items() if v == "auto"]
    if not auto:
        return Resolved(config, None, total, count_with(base, config))
    key, target = auto[0], max(1, int(round(experiment.budget * total)))
    if key == "budget":
        config[key] = target
    elif key in ("r", "num_virtual_tokens"):  # linear in the field: one probe at 1
        per_unit = count_with(base, {**config, key: 1})
        config[key] = max(1, round(target / per_unit))
    else:  # Supertuning: keeps int(numel · (1 − sparsity)) entries per targeted tensor
        half = count_with(base, {**config, key: 0.5})
        config[key] = min(max(1.0 - target / (2.0 * half), 0.0), 1.0 - 1e-9)
    if experiment.overrides.get("s3pet_structure"):
        return Resolved(config, target, total)  # the count is the structure's, known after the search
    return Resolved(config, target, total, count_with(base, config))
