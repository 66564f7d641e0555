"""Write an output folder all at once: build it in a hidden sibling folder, then rename it into place.

A crash, an exception or Ctrl-C while the folder is being written leaves no half-written output behind: the hidden
folder is removed, and an existing output (when replacing it is allowed) is only swapped out once the new one is
complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def check_output_dir(path: str | os.PathLike, *, overwrite: bool) -> Path:
    """Check that `path` can receive an output folder; returns it as a `Path`.

    Raises:
        FileExistsError: if `path` exists and `overwrite` is False, or it exists and is not a folder.
        NotADirectoryError: if the nearest existing parent is a file.
        PermissionError: if the nearest existing parent is not writable (missing parents are created on write).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder; choose another output path.")
    if path.exists() and not overwrite and any(path.iterdir()):
        raise FileExistsError(f"{path} already exists and is not empty; choose another path or replace it.")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"{parent} is a file, so {path} cannot be created; choose another output path.")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"{parent} is not writable, so {path} cannot be created; choose another output path.")
    return path


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder next to `path`; on success it becomes `path`, on failure it is removed.

    Args:
        path (`str` or `os.PathLike`): the final folder.
        overwrite (`bool`, *optional*, defaults to `False`): replace an existing non-empty `path` (swapped out only
            after the new folder is complete).

    Example:

    ```py
    >>> with atomic_output_dir("out/adapter", overwrite=True) as tmp:  # doctest: +SKIP
    ...     model.save_pretrained(tmp)
    ```
    """
    path = check_output_dir(path, overwrite=overwrite).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700 folders
        if path.exists():
            _swap_in(tmp, path)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(new: Path, path: Path) -> None:
    """Replace the existing folder `path` by `new`; if that fails, the previous `path` is put back."""
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
    previous = old / "previous"
    try:
        os.rename(path, previous)
    except BaseException:
        shutil.rmtree(old, ignore_errors=True)
        raise
    try:
        os.rename(new, path)
    except BaseException as error:
        try:
            os.rename(previous, path)
        except OSError as restore_error:
            raise OSError(
                f"Replacing {path} failed ({error}) and the previous output could not be moved back "
                f"({restore_error}); it is kept in {previous}."
            ) from error
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
