"""One check of Hub repository ids, shared by the command line, the push and the model card.

The Hub's own rules (as `huggingface_hub.utils.validate_repo_id` states them): `name` or `namespace/name`, each part
1 to 96 of `A-Z a-z 0-9 - _ .`, neither starting nor ending with `-` or `.`, no `--` or `..`, not ending in `.git`.
Kept free of heavy imports: the command line checks its options with it before anything is imported.
"""

from __future__ import annotations

import re

_PART = re.compile(r"[A-Za-z0-9_](?:[\w.-]{0,94}[A-Za-z0-9_])?", re.ASCII)


def is_hub_id(name: object, *, namespace_required: bool = False) -> bool:
    """Whether `name` is a well-formed Hub repository id (`namespace/name`, or `name` alone when allowed).

    Example:

    ```py
    >>> from adapters_hub._repo_ids import is_hub_id
    >>> is_hub_id("bert-base-uncased"), is_hub_id("bert-base-uncased", namespace_required=True)
    (True, False)
    >>> is_hub_id("me/my--adapter"), is_hub_id("./me/adapter")
    (False, False)
    ```
    """
    if not isinstance(name, str) or "--" in name or ".." in name or name.endswith(".git"):
        return False
    parts = name.split("/")
    if len(parts) > 2 or (namespace_required and len(parts) != 2):
        return False
    return all(_PART.fullmatch(part) for part in parts)


_CONFIG = re.compile(r"[\w.-]+", re.ASCII)


def is_hub_dataset(name: object) -> bool:
    """Whether `name` reads as a Hub dataset the command line accepts: a repository id, then `:config` optionally.

    Example:

    ```py
    >>> from adapters_hub._repo_ids import is_hub_dataset
    >>> is_hub_dataset("nyu-mll/glue:sst2"), is_hub_dataset("glue"), is_hub_dataset("a--b:sst2")
    (True, True, False)
    ```
    """
    if not isinstance(name, str):
        return False
    repo, colon, config = name.partition(":")
    return is_hub_id(repo) and (not colon or _CONFIG.fullmatch(config) is not None)
