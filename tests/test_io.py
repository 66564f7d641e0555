import json
import os
import stat

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
