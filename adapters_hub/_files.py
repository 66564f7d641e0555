"""Write an output folder all at once: build it in a hidden sibling folder, then rename it into place.

A crash, an exception, Ctrl-C or SIGTERM (through the command line's handler) while the folder is being written
leaves no half-written output behind: the hidden folder is removed, and an existing output (when replacing it is
allowed) is only swapped out once the new one is complete. Hidden folders of runs that were killed outright
(SIGKILL, power loss) are removed by the next run writing the same output, which first moves back a previous output
that such a run had swapped out.

Every folder written here gets a marker file (`MARKER`) that lists the files written (with their size, and a
sha256 for the small ones); with `only_pack_outputs=True` (the command line and the example scripts), `overwrite`
replaces only a folder holding that marker or nothing but files the pack writes, and refuses any other non-empty
folder, and also a marked folder that now holds files the pack did not write there or that changed since (a
LICENSE, notes added to README.md): nothing already saved is lost. Whatever the options, the current directory
and its parents, the home folder, a repository root (a folder holding `.git`), the pack's source tree (and its
parents) and the folders given as `protect` (e.g. the data and the source adapter) and their parents are never
replaced.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

MARKER = ".peft-designspace-output"
EXPORT_INFO = "peft_designspace_export.json"  # adapters_hub.export.INFO_NAME: every export folder holds it
# what earlier versions of the pack wrote at the top of an output folder, before the marker existed
KNOWN_OUTPUT_NAMES = (
    "adapter",
    "adapter-*",
    "retrain-*",
    "search",
    "results.json",
    "budget_report.json",
    "s3pet_structure.json",
    "s3pet_structure*.png",
    "s3pet_search_trajectory.png",
)
_SOURCE_ROOT = Path(__file__).resolve().parent.parent
HASHED_SIZE = 1 << 20  # files up to this size are recorded with their sha256 (text a user may edit), larger by size
LISTED_FILES = 10  # files named in a refusal, the rest counted
# what file browsers leave in a folder they show (Finder's `.DS_Store` and `._*`, Windows' `Thumbs.db`): not the
# user's work, and re-running an output into such a folder must not be refused for it
SYSTEM_FILES = (".DS_Store", "._*", "Thumbs.db", "desktop.ini")


def is_pack_output(path: str | os.PathLike) -> bool:
    """Whether the folder `path` holds an output of the pack: its marker, or only names the pack writes."""
    path = Path(path)
    if (path / MARKER).is_file() or (path / EXPORT_INFO).is_file():  # an export written before the marker existed
        return True
    names = [p.name for p in path.iterdir()]
    return bool(names) and all(any(fnmatch.fnmatchcase(n, pattern) for pattern in KNOWN_OUTPUT_NAMES) for n in names)


def _file_record(path: Path) -> dict[str, object]:
    """What the marker records about one written file: its size, and its sha256 when it is small."""
    size = path.lstat().st_size
    if path.is_symlink() or size > HASHED_SIZE:
        return {"size": size}
    return {"size": size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def folder_files(folder: str | os.PathLike) -> dict[str, dict[str, object]]:
    """Every file under `folder` (POSIX path relative to it → `_file_record`), the marker left out.

    Links are listed, not followed. Example: `folder_files("out")` → `{"adapter/adapter_config.json": {"size": 512,
    "sha256": "..."}, ...}`.
    """
    folder = Path(folder)
    found = {}
    for directory, dirnames, filenames in os.walk(folder):
        links = [d for d in dirnames if os.path.islink(os.path.join(directory, d))]
        for name in [*filenames, *links]:
            item = Path(directory, name)
            relative = item.relative_to(folder).as_posix()
            if relative != MARKER:
                found[relative] = _file_record(item)
    return found


def _recorded_files(path: Path) -> dict[str, dict[str, object]] | None:
    """The files that the marker of `path` lists, or None for a marker written before the list existed."""
    try:
        content = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    files = content.get("files") if isinstance(content, dict) else None
    return files if isinstance(files, dict) else None


def unrecorded_files(path: str | os.PathLike) -> list[str]:
    """The files in the pack output `path` that its marker does not list, or that changed since they were written.

    These are the user's (a LICENSE or an evaluation added afterwards, notes appended to README.md): replacing the
    folder would delete them. An older marker without a file list, or no marker, gives `[]` (nothing to compare).

    Example:

    ```py
    >>> with atomic_output_dir("out") as tmp:  # doctest: +SKIP
    ...     (tmp / "results.json").write_text("{}")
    >>> Path("out/LICENSE").write_text("mine")  # doctest: +SKIP
    >>> unrecorded_files("out")  # doctest: +SKIP
    ['LICENSE']
    ```
    """
    path = Path(path)
    recorded = _recorded_files(path) if (path / MARKER).is_file() else None
    if recorded is None:
        return []
    return sorted(
        name
        for name, record in folder_files(path).items()
        if recorded.get(name) != record and not _is_system_file(name)
    )


def _is_system_file(relative: str) -> bool:
    base = relative.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(base, pattern) for pattern in SYSTEM_FILES)


def _listing(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:LISTED_FILES])
    return shown + (f" and {len(names) - LISTED_FILES} more" if len(names) > LISTED_FILES else "")


def never_replaced(path: Path, protect: Iterable[str | os.PathLike]) -> str | None:
    """Why the existing or future folder `path` (resolved) must never be replaced, or None."""
    cwd = Path.cwd().resolve()
    if path == cwd or path in cwd.parents:
        return "is the current directory or one of its parents"
    if path == Path(path.anchor) or path == Path.home().resolve():
        return "is the file-system root or the home folder"
    if (path / ".git").exists():
        return "is the root of a repository (it holds .git)"
    if path == _SOURCE_ROOT or path in _SOURCE_ROOT.parents:
        return f"is (or holds) the pack's source tree {_SOURCE_ROOT}"
    for item in protect:
        if item is None:
            continue
        kept = Path(item).resolve()
        if path == kept or path in kept.parents:
            return f"is (or holds) {os.fspath(item)!r}, an input of this run"
    return None


def inside_inputs(path: str | os.PathLike, inputs: Iterable[str | os.PathLike | None]) -> str | None:
    """Why `path` is or lies in one of the run's input folders (the data, the model), or None."""
    resolved = Path(path).resolve()
    for item in inputs:
        if item is not None and (resolved == Path(item).resolve() or Path(item).resolve() in resolved.parents):
            return f"lies in {os.fspath(item)!r}, an input of this run"
    return None


def replaced_non_export(path: str | os.PathLike, overwrite: bool) -> str | None:
    """Why an export with `overwrite` must not replace `path`, or None: an export replaces only an earlier export,
    never another non-empty folder (a training run's folder can hold the very adapter being exported)."""
    folder = Path(path)
    if overwrite and folder.is_dir() and any(folder.iterdir()) and not (folder / EXPORT_INFO).is_file():
        return (
            f"{folder} holds something that is not an export (no {EXPORT_INFO}), such as a training run's adapter; "
            "an export replaces only an earlier export. Choose a new folder."
        )
    return None


def check_output_dir(
    path: str | os.PathLike,
    *,
    overwrite: bool,
    only_pack_outputs: bool = False,
    protect: Iterable[str | os.PathLike] = (),
) -> Path:
    """Check that `path` can receive an output folder; returns it as a `Path`.

    Args:
        path (`str` or `os.PathLike`): the output folder.
        overwrite (`bool`): whether an existing non-empty folder may be replaced.
        only_pack_outputs (`bool`, *optional*, defaults to `False`): with `overwrite`, replace only a folder that
            holds a previous output of the pack (see `is_pack_output`); refuse any other non-empty folder.
        protect (iterable of paths, *optional*): inputs of the run (data, source adapter): the output may be neither
            one of them nor a folder holding one.

    Raises:
        FileExistsError: if `path` exists and `overwrite` is False, or it exists and is not a folder, or it is not
            an output of the pack (or holds files the pack did not write there, see `unrecorded_files`) and
            `only_pack_outputs` is set, or it must never be replaced (the current directory, a repository root, an
            input, ...).
        NotADirectoryError: if the nearest existing parent is a file.
        PermissionError: if the nearest existing parent is not writable (missing parents are created on write).
    """
    for name, value in (("overwrite", overwrite), ("only_pack_outputs", only_pack_outputs)):
        if not isinstance(value, bool):  # "no" would count as True and replace the folder
            raise TypeError(f"`{name}` must be True or False, got {value!r}.")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder; choose another output path.")
    why = never_replaced(path.resolve(), protect)
    if why:
        raise FileExistsError(f"{path} {why}; it is never used as an output folder, choose a new subfolder.")
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{path} already exists and is not empty; choose another path or replace it.")
        if only_pack_outputs and not is_pack_output(path):
            raise FileExistsError(
                f"{path} is not empty and does not hold a previous output of peft-designspace (no {MARKER} file), "
                "so it is not replaced even with overwrite; choose a new folder or empty this one yourself."
            )
        added = unrecorded_files(path) if only_pack_outputs else []
        if added:
            raise FileExistsError(
                f"{path} is a previous output of peft-designspace, but it holds files that the pack did not write "
                f"there or that changed since: {_listing(added)}; replacing the folder would delete them, so it is "
                "not replaced even with overwrite. Move them elsewhere (or delete them yourself), or choose a new "
                "folder."
            )
    check_creatable(path.absolute().parent, path)
    return path


def check_creatable(folder: str | os.PathLike, path: str | os.PathLike | None = None) -> None:
    """Check that `folder` can be written into: its nearest existing ancestor (or itself) is a writable folder.

    `path` is what will be written there, named in the message (defaults to `folder`). Missing folders are not
    created here.

    Raises:
        NotADirectoryError: if the nearest existing ancestor is a file.
        PermissionError: if it is a folder that is not writable.
    """
    path = Path(folder if path is None else path)
    parent = Path(folder).absolute()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"{parent} is a file, so {path} cannot be created; choose another output path.")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"{parent} is not writable, so {path} cannot be created; choose another output path.")


def expand_home(args: object, names: Iterable[str] | None = None) -> None:
    """Expand a leading `~` in the path options `names` of `args` (an `argparse.Namespace`), in place.

    A shell leaves `--opt=~/x` as it is, so the program gets a literal `~`. With `names=None` every string option is
    looked at, and only `~` and `~/...` are expanded (any option may hold text); named options also take `~user/...`.
    """
    for name in list(vars(args)) if names is None else names:
        value = getattr(args, name, None)
        if isinstance(value, str) and value.startswith("~"):
            if names is not None or value == "~" or value.startswith("~/"):
                setattr(args, name, os.path.expanduser(value))


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the hidden `.<name>.tmp-<pid>-*` and `.<name>.old-<pid>-*` siblings of `path` left by runs whose
    process is gone.

    A run killed between the two renames of a replacement left `path` missing and its previous output in
    `.<name>.old-<pid>-*/previous`: that output is moved back to `path` first (with a warning). Returns the folders
    removed. A folder of a process still running (e.g. a concurrent run) is kept.
    """
    from peft_designspace._io import process_alive  # lazy: the command line checks its paths before heavy imports

    path = Path(path).absolute()
    removed = []
    if not path.parent.is_dir():
        return removed
    for tag in (".old-", ".tmp-"):  # a previous output is put back before anything else is looked at
        prefix = f".{path.name}{tag}"
        for candidate in sorted(path.parent.iterdir()):
            if not candidate.name.startswith(prefix) or not candidate.is_dir() or candidate.is_symlink():
                continue
            pid = candidate.name[len(prefix) :].split("-", 1)[0]
            if not pid.isdigit() or process_alive(int(pid)):
                continue
            previous = candidate / "previous"
            if tag == ".old-" and previous.is_dir() and not os.path.lexists(path):
                os.rename(previous, path)
                warnings.warn(
                    f"{path} was missing: a run replacing it was killed midway. Its previous output is back.",
                    stacklevel=2,
                )
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


@contextlib.contextmanager
def atomic_output_dir(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    only_pack_outputs: bool = False,
    protect: Iterable[str | os.PathLike] = (),
) -> Iterator[Path]:
    """Yield a fresh temporary folder next to `path`; on success it becomes `path`, on failure it is removed.

    Args:
        path (`str` or `os.PathLike`): the final folder.
        overwrite (`bool`, *optional*, defaults to `False`): replace an existing non-empty `path` (swapped out only
            after the new folder is complete).
        only_pack_outputs (`bool`, *optional*, defaults to `False`): replace only a previous output of the pack.
        protect (iterable of paths, *optional*): inputs that the output may neither be nor hold.

    The finished folder holds the marker file `MARKER`, which lists the files written and lets a later run with
    `only_pack_outputs` replace it (as long as it holds nothing else, see `unrecorded_files`).

    Example:

    ```py
    >>> with atomic_output_dir("out/adapter", overwrite=True) as tmp:  # doctest: +SKIP
    ...     model.save_pretrained(tmp)
    ```
    """
    protect = list(protect)
    remove_stale_temporaries(path)  # first: it may put back a previous output that a killed run had swapped out
    path = check_output_dir(path, overwrite=overwrite, only_pack_outputs=only_pack_outputs, protect=protect)
    path = path.absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent))
    try:
        yield tmp
        marker = {"written_by": "peft-designspace", "files": folder_files(tmp)}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700 folders
        if path.exists():
            # checked again: the folder may have changed while the run was going on
            check_output_dir(path, overwrite=overwrite, only_pack_outputs=only_pack_outputs, protect=protect)
            _swap_in(tmp, path)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(new: Path, path: Path) -> None:
    """Replace the existing folder `path` by `new`; if that fails, the previous `path` is put back."""
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-{os.getpid()}-", dir=path.parent))
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
