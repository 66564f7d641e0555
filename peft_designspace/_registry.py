"""Registration of the pack's methods with PEFT.

This is the only module of the pack that touches PEFT's registry internals (`PeftType`'s enum tables and
`peft.mapping`), and the only one that changes a PEFT class (`PeftModel.create_or_update_model_card`, so that
transformers' `Trainer.push_to_hub` keeps the pack's model card). Everything else uses PEFT's public classes
(`PeftConfig`, `BaseTuner`, `BaseTunerLayer`).

Why an enum member: `peft.utils.register_peft_method` refuses names that are not members of `PeftType`, and a
plain-string `peft_type` breaks transformers' `load_adapter` (it calls `peft_type.value`). So we add a real member,
with the same name and value, before registering. The operation is idempotent (importing the pack twice, or
reloading it, is harmless) and refuses clashes: a name already used by another method, or a prefix already used by
another method (PEFT's own prefix check looks in the wrong place, see `docs/architecture.md`).
"""

import enum
import functools
import os
import warnings

import peft
from packaging.version import Version
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import PeftType, register_peft_method

# The state-dict hooks the pack relies on (`BaseTuner._get_adapter_state_dict` and friends) first shipped in 0.21,
# and `PeftType`/`peft.mapping` are private API: accept only the minor version we test against.
SUPPORTED_PEFT = (Version("0.21.0"), Version("0.22.0"))


def check_peft_version(version: str | None = None) -> None:
    """Raise `ImportError` unless the installed peft is in the supported range `[0.21, 0.22)`.

    Args:
        version (`str`, *optional*):
            The version to check; defaults to the installed `peft.__version__`.

    Example:

    ```py
    >>> check_peft_version("0.21.2")  # passes silently
    ```
    """
    found = Version(version or peft.__version__)
    low, high = SUPPORTED_PEFT
    if not (low <= Version(found.base_version) < high):
        raise ImportError(
            f"peft-designspace needs peft>={low},<{high}, found peft=={found}. "
            f"Install a supported version with `pip install 'peft>={low},<{high}'`."
        )


def add_peft_type(name: str) -> PeftType:
    """Add `name` as a member of `peft.utils.PeftType` (name == value) and return it; idempotent.

    Args:
        name (`str`):
            The upper-case member name, e.g. `"DESIGNSPACE"`.

    Raises:
        ValueError: if the name is not upper case, or if a member with this name or value exists with another meaning.

    Example:

    ```py
    >>> member = add_peft_type("DESIGNSPACE")
    >>> member == "DESIGNSPACE" and PeftType("DESIGNSPACE") is member
    True
    ```
    """
    if not isinstance(name, str) or not name.isidentifier() or not name.isupper():
        raise ValueError(f"`name` must be an upper-case identifier, got {name!r}.")
    existing = PeftType.__members__.get(name)
    if existing is not None:
        if existing.value != name:
            raise ValueError(f"PeftType already has a member {name!r} with the different value {existing.value!r}.")
        return existing
    if name in PeftType._value2member_map_:
        raise ValueError(f"PeftType already has a member with the value {name!r}.")

    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = PeftType
    member._sort_order_ = len(PeftType._member_names_)
    PeftType._member_map_[name] = member
    PeftType._member_names_.append(name)
    PeftType._value2member_map_[name] = member
    # enum members are exposed as class attributes through a descriptor on Python 3.11+; a plain attribute works on
    # every supported version and is what `getattr(PeftType, name)` in `register_peft_method` needs.
    type.__setattr__(PeftType, name, member)
    if not isinstance(PeftType(name), enum.Enum):  # pragma: no cover - defensive, guards future enum changes
        raise RuntimeError(f"Adding {name!r} to PeftType failed.")
    return member


def register_method(name: str, config_cls: type, model_cls: type) -> PeftType:
    """Register one method of the pack with PEFT: enum member, clash checks, then `register_peft_method`.

    The prefix is always `name + "_"` and must equal `model_cls.prefix`. Calling this twice with the same classes is a
    no-op; calling it with a name or prefix that another method already uses raises.

    Args:
        name (`str`):
            Lower-case method name, e.g. `"designspace"`.
        config_cls (`type`):
            The `PeftConfig` subclass of the method.
        model_cls (`type`):
            The `BaseTuner` subclass of the method.

    Raises:
        ValueError: on a name or prefix clash with another registered method.

    Example:

    ```py
    >>> from peft_designspace import DesignSpaceConfig, DesignSpaceModel
    >>> register_method("designspace", DesignSpaceConfig, DesignSpaceModel)  # already done on import: no-op
    <PeftType.DESIGNSPACE: 'DESIGNSPACE'>
    ```
    """
    prefix = f"{name}_"
    if getattr(model_cls, "prefix", None) != prefix:
        raise ValueError(
            f"`{model_cls.__name__}.prefix` must be {prefix!r}, got {getattr(model_cls, 'prefix', None)!r}."
        )
    existing = PeftType.__members__.get(name.upper())
    registered_config = PEFT_TYPE_TO_CONFIG_MAPPING.get(existing) if existing is not None else None
    if registered_config is not None:

        def same_class(a: type, b: type) -> bool:  # identical, or the same class re-imported by importlib.reload
            return a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)

        same = same_class(registered_config, config_cls) and same_class(
            PEFT_TYPE_TO_TUNER_MAPPING[existing], model_cls
        )
        if not same:
            raise ValueError(
                f"The PEFT method {name!r} is already registered by {registered_config.__module__}; "
                "refusing to overwrite it."
            )
        # idempotent (also after `importlib.reload`): point the registry at the current classes
        PEFT_TYPE_TO_CONFIG_MAPPING[existing] = config_cls
        PEFT_TYPE_TO_TUNER_MAPPING[existing] = model_cls
        return existing

    # all checks before any change, so that a refused registration leaves PEFT untouched
    for other_type, other_prefix in PEFT_TYPE_TO_PREFIX_MAPPING.items():
        if str(other_type.value) == name.upper():
            continue
        if other_prefix.startswith(prefix) or prefix.startswith(other_prefix):
            raise ValueError(
                f"The prefix {prefix!r} of {name!r} clashes with the prefix {other_prefix!r} of the registered "
                f"method {str(other_type.value)!r}: PEFT finds adapter weights by prefix, so they must differ."
            )
    peft_type = add_peft_type(name.upper())
    register_peft_method(name=name, config_cls=config_cls, model_cls=model_cls, prefix=prefix)
    return peft_type


PACK_TYPES = ("DESIGNSPACE", "SAMTUNING", "S3PET")  # the pack's `peft_type` values (also read by `adapters_hub`)
CARD_BEGIN = "<!-- peft-designspace:begin -->"  # the start of the pack's section in a model card


def keep_pack_card() -> None:
    """Make `PeftModel.create_or_update_model_card` keep the pack's model card section; idempotent.

    transformers' `Trainer.create_model_card` (run by `Trainer.push_to_hub`) overwrites README.md with its training
    summary, then calls that PEFT method to add PEFT's metadata: the pack's section (method, settings, how to load
    it with `import peft_designspace`) was lost from the card pushed to the Hub. After PEFT's update, for a model
    holding an adapter of the pack, a README.md without the section gets it again from the folder's
    `adapter_config.json` (the default adapter's: a named adapter is saved in a subfolder). A card that cannot be
    written then is a warning, not an error. PEFT's own `save_pretrained` calls the method before it writes the
    config: a folder saved before already has the section, and the config's `save_pretrained` writes it anew.

    Example:

    ```py
    >>> keep_pack_card()  # done on `import peft_designspace`; a second call changes nothing
    ```
    """
    from peft import PeftModel

    original = PeftModel.create_or_update_model_card
    if getattr(original, "keeps_pack_card", False):
        return

    @functools.wraps(original)
    def create_or_update_model_card(self, output_dir: str) -> None:
        original(self, output_dir)
        ours = any(str(getattr(c.peft_type, "value", c.peft_type)) in PACK_TYPES for c in self.peft_config.values())
        readme = os.path.join(output_dir, "README.md")
        if not ours or not os.path.isfile(os.path.join(output_dir, "adapter_config.json")):
            return
        with open(readme, encoding="utf-8") as f:  # PEFT's update above always leaves a README.md
            if CARD_BEGIN in f.read():
                return
        from adapters_hub.card import write_model_card  # lazy: adapters_hub imports this package

        try:
            write_model_card(output_dir)
        except Exception as err:  # the card is documentation: a folder it cannot read must not stop a save or push
            warnings.warn(f"The pack's model card section was not written to {readme}: {err}", stacklevel=2)

    create_or_update_model_card.keeps_pack_card = True
    PeftModel.create_or_update_model_card = create_or_update_model_card
