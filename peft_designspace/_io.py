"""Atomic file writes: every file this pack writes goes through a temporary file in the same folder and a rename.

A reader never sees a half-written file, and an interrupted write leaves the previous file untouched.
"""

import json
import os
import tempfile
from pathlib import Path
from typing import Any

# read once, at import: reading the umask means setting it, which would race with other threads at every write
_UMASK = os.umask(0)
os.umask(_UMASK)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` through a temporary file in the same folder, then rename it into place.

    The file gets the usual permissions (`0o666` less the umask), not the private ones `mkstemp` creates.

    Example:

    ```py
    >>> from peft_designspace._io import write_text_atomic
    >>> write_text_atomic("/tmp/report.md", "# Report\\n")
    PosixPath('/tmp/report.md')
    ```
    """
    path = Path(path).expanduser().absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:  # closes the descriptor whatever fails below
            os.chmod(tmp, 0o666 & ~_UMASK)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(data: Any, path: str | os.PathLike) -> Path:
    """Write `data` as indented JSON (non-JSON values through `str`) to `path`, atomically.

    Example:

    ```py
    >>> from peft_designspace._io import write_json_atomic
    >>> write_json_atomic({"a": 1}, "/tmp/a.json")
    PosixPath('/tmp/a.json')
    ```
    """
    return write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
