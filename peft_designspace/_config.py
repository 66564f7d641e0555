"""What every config of the pack shares: the pack version it was written with, and the model card on save."""

import math
import numbers
import os
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from ._version import __version__

# set on a config by the tuner that injects it (not a dataclass field: never saved); read when the config is saved
ADAPTER_NAME_ATTRIBUTE = "_designspace_adapter_name"


def _fail(field_name: str, value: Any, allowed: str, exc: type[Exception] = ValueError) -> None:
    raise exc(f"`{field_name}` must be {allowed}, got {value!r}.")


def _check_type(name: str, value: Any, types: type | tuple[type, ...], allowed: str) -> None:
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        _fail(name, value, allowed, TypeError)
    if not isinstance(value, types):
        _fail(name, value, allowed, TypeError)


def _check_positive_int(name: str, value: Any, optional: bool = True) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(name, value, "a positive int" + (" or None" if optional else ""), TypeError)
    if value < 1:
        _fail(name, value, "a positive int" + (" or None" if optional else ""))


def _check_positive_number(name: str, value: Any) -> int | float:
    """Validate a finite number > 0 (not a bool) and return it, numpy and other `numbers.Real` scalars as `float`."""
    allowed = "a positive number (finite: not inf or nan)"
    _check_type(name, value, numbers.Real, allowed)
    if not (math.isfinite(value) and value > 0):
        _fail(name, value, allowed)
    return value if type(value) in (int, float) else float(value)


def check_budget(budget: Any, of: str) -> float | int:
    """Validate a budget (a fraction of `of` in (0, 1), or a whole count >= 1) and return it (counts as `int`).

    Any real number but a bool is taken, numpy scalars included (`numpy.int64(500)`, `numpy.float64(0.01)`); a count
    comes back as a Python `int`, a fraction as a Python `float`.
    """
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real):
        _fail("budget", budget, "a float fraction in (0, 1) or an int count >= 1", TypeError)
    if math.isnan(budget) or math.isinf(budget) or not budget > 0:
        _fail("budget", budget, f"> 0 (a fraction of {of} in (0, 1) or a count >= 1)")
    if budget >= 1 and not isinstance(budget, numbers.Integral) and budget != int(budget):
        _fail("budget", budget, "a whole number when >= 1 (an absolute parameter count)")
    return int(budget) if budget >= 1 else float(budget)


def floor_of_fraction(fraction: float, total: int) -> int:
    """`⌊fraction · total⌋` for the fraction as written (its shortest decimal form), not its binary float product.

    `0.29 * 100` is `28.999…` in floating point; this gives 29, the count a user who wrote 0.29 expects.

    Example:

    ```py
    >>> int(0.29 * 100), floor_of_fraction(0.29, 100)
    (28, 29)
    ```
    """
    return math.floor(Fraction(repr(float(fraction))) * total)


def check_module_names(name: str, value: Any, regex: bool = False) -> None:
    """Validate an optional list of module names such as `modules_to_save`, or also a regex string when `regex`
    (PEFT's `target_modules` rules); otherwise a lone string is refused, as PEFT would iterate over its characters."""
    if value is None or (regex and isinstance(value, str)):
        return
    if not (isinstance(value, (list, tuple, set)) and all(isinstance(v, str) for v in value)):
        allowed = (
            "None, a regex string or a list of module names (PEFT's rules)"
            if regex
            else "None or a list of module names, e.g. ['classifier']"
        )
        _fail(name, value, allowed, TypeError)


def check_layer_stacks(layer_stacks: Any) -> list[str] | None:
    """Validate `layer_stacks`: `None` (found automatically) or a list (or tuple) of module paths; return a list.

    Raises:
        TypeError: for anything else, a single string included (`"bert.encoder.layer"` must be
            `["bert.encoder.layer"]`).
    """
    if layer_stacks is None:
        return None
    if not isinstance(layer_stacks, (list, tuple)) or not all(isinstance(s, str) for s in layer_stacks):
        _fail("layer_stacks", layer_stacks, "a list of module paths or None", TypeError)
    return list(layer_stacks)


def check_schema_version(version: Any, current: int) -> None:
    """Refuse a config JSON layout newer than this version of the pack understands."""
    _check_type("schema_version", version, int, "an int")
    if version > current:
        raise ValueError(
            f"`schema_version` {version!r} is newer than this peft-designspace understands ({current}); upgrade "
            "with `pip install -U peft-designspace`."
        )


@dataclass
class PackConfigMixin:
    """Mixed into the pack's `PeftConfig` subclasses.

    `pack_version` lands in `adapter_config.json`, so a loader can tell an adapter written by a newer pack (see
    `adapters_hub.load_adapter`). Saving a config also writes the pack's model card (`README.md`) next to it: PEFT
    writes its own card first and the config last, so ours replaces PEFT's template body and keeps any text a person
    wrote (`adapters_hub.card.write_model_card`).
    """

    pack_version: str = field(default=__version__, metadata={"help": "peft-designspace version that wrote this."})

    def save_pretrained(self, save_directory: str, **kwargs) -> None:
        super().save_pretrained(save_directory, **kwargs)
        from adapters_hub.card import write_model_card  # lazy: adapters_hub imports this package

        # the name the tuner injected this config under (`WrapperTunerMixin.inject_adapter`); PEFT saves an adapter
        # not called "default" in a subfolder of that name
        name = getattr(self, ADAPTER_NAME_ATTRIBUTE, "default")
        subfolder = name if name != "default" and os.path.basename(os.path.normpath(save_directory)) == name else ""
        write_model_card(save_directory, adapter_name=name, subfolder=subfolder)
