import json
import os
import stat
from pathlib import Path

import pytest

import peft_designspace._io as io_module
from peft_designspace._io import write_json_atomic, write_text_atomic


def test_atomic_write_replaces_and_uses_normal_permissions(tmp_path):
    path = tmp_path / "sub" / "report.md"
    write_text_atomic(path, "first\n")
    write_text_atomic(path, "second\n")
    assert path.read_text() == "second\n"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.md"]


def test_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    write_json_atomic({"a": 1}, path)

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(io_module.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_json_atomic({"a": 2}, path)
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_json_falls_back_to_str_for_other_values(tmp_path):
    path = write_json_atomic({"path": tmp_path}, tmp_path / "a.json")
    assert json.loads(path.read_text()) == {"path": str(tmp_path)}


def test_atomic_path_keeps_the_previous_file_when_the_block_fails(tmp_path):
    path = tmp_path / "state.bin"
    with io_module.atomic_path(path) as tmp:
        tmp.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="interrupted"):
        with io_module.atomic_path(path) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]


def test_atomic_path_without_parents_names_the_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        with io_module.atomic_path(tmp_path / "missing" / "a.png", make_parents=False):
            pass
    assert not (tmp_path / "missing").exists()


def test_s3pet_plot_that_fails_leaves_the_previous_image_and_no_temporary(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from peft_designspace.s3pet import plot

    path = tmp_path / "p.png"
    fig, _ = plt.subplots()
    plot._save(fig, path, dpi=20)
    before = path.read_bytes()
    assert before.startswith(b"\x89PNG")

    def broken_savefig(self, target, *args, **kwargs):  # writes part of the file, then fails
        Path(target).write_bytes(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken_savefig)
    fig, _ = plt.subplots()
    with pytest.raises(OSError, match="disk full"):
        plot._save(fig, path, dpi=20)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]
