"""Atomic file writes: every file this pack writes goes through a temporary file in the same folder and a rename.

A reader never sees a half-written file, and an interrupted write leaves the previous file untouched.
"""

import contextlib
import glob
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# read once, at import: reading the umask means setting it, which would race with other threads at every write
_UMASK = os.umask(0)
os.umask(_UMASK)
# a temporary file is `.<name>.part-<pid>-<random>` next to its target (the pid lets a later writer remove the file
# of a process that was killed outright); `adapters_hub._files` names its folders `.<name>.tmp-<pid>-...` and
# `.<name>.old-<pid>-...`
PART = ".part-"
TEMPORARY_TAGS = (PART, ".tmp-", ".old-")


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs (one of another user, or one that cannot be checked, counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def is_temporary_name(name: str) -> bool:
    """Whether `name` is a hidden temporary of a write in progress or killed (this pack's, or `mkstemp`'s `.tmp`)."""
    return name.startswith(".") and (any(tag in name for tag in TEMPORARY_TAGS) or name.endswith(".tmp"))


def _remove_dead_writers_files(path: Path) -> None:
    prefix = f".{path.name}{PART}"
    for candidate in path.parent.glob(f"{glob.escape(prefix)}*"):
        pid = candidate.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not candidate.is_dir() and not process_alive(int(pid)):
            candidate.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, make_parents: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to `path`; when the block ends without error, the file there replaces `path`.

    The block writes the whole file at the yielded path (by any means: `open`, `torch.save`, `fig.savefig`). It is
    flushed to disk and gets the usual permissions (`0o666` less the umask), not the private ones `mkstemp` creates,
    then renamed into place. If the block raises (or is interrupted), the temporary file is removed and a previous
    file at `path` is left untouched. The temporary file's name holds the writer's pid: the next write of `path`
    removes one left by a process that was killed outright.

    Args:
        path (`str` or `os.PathLike`): the file to write.
        make_parents (`bool`, *optional*, defaults to `True`): create missing folders above `path`; with `False` a
            missing folder raises `FileNotFoundError`.

    Example:

    ```py
    >>> from peft_designspace._io import atomic_path
    >>> with atomic_path("/tmp/numbers.txt") as tmp:
    ...     _ = tmp.write_text("1 2 3\\n")
    >>> open("/tmp/numbers.txt").read()
    '1 2 3\\n'
    ```
    """
    path = Path(path).expanduser().absolute()
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_writers_files(path)  # left by a writer that was killed outright (SIGKILL, power loss)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}{PART}{os.getpid()}-", dir=path.parent)
    tmp = Path(name)
    try:
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)
        yield tmp
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` through a temporary file in the same folder, then rename it into place.

    Example:

    ```py
    >>> from peft_designspace._io import write_text_atomic
    >>> write_text_atomic("/tmp/report.md", "# Report\\n")
    PosixPath('/tmp/report.md')
    ```
    """
    path = Path(path).expanduser().absolute()
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_json_atomic(data: Any, path: str | os.PathLike) -> Path:
    """Write `data` as indented JSON (non-JSON values through `str`) to `path`, atomically.

    Example:

    ```py
    >>> import json, os, tempfile
    >>> from trainer_ext import write_json_atomic
    >>> path = write_json_atomic({"a": 1}, os.path.join(tempfile.mkdtemp(), "a.json"))
    >>> json.loads(path.read_text())
    {'a': 1}
    ```
    """
    return write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
