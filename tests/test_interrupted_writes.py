"""Writes interrupted midway (a full disk, Ctrl-C, a process killed outright) keep what was saved before.

From a failure-atomicity review: each test injects the failure where the review did and checks what is on disk.
"""

import errno
import json
import os
import subprocess
import sys

import pytest
from peft import get_peft_model
from s3pet_helpers import searched_structure
from test_exploration import BUDGET, small_space
from tiny_models import make_model

from adapters_hub._files import remove_stale_temporaries
from adapters_hub.hub import _ignore_not_uploaded
from peft_designspace import DesignSpaceConfig, S3PETConfig
from peft_designspace._io import PART, write_text_atomic
from trainer_ext.explore import ExploreSettings, run_exploration
from trainer_ext.explore_report import plot_edfs


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# temporary files and folders of killed writers --------------------------------------------------------------------
def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "best_design.json"
    dead = tmp_path / f".best_design.json{PART}{_dead_pid()}-x1"
    live = tmp_path / f".best_design.json{PART}{os.getpid()}-x2"  # a write in progress (here: this process)
    dead.write_text("half")
    live.write_text("half")
    write_text_atomic(target, "{}\n")
    assert target.read_text() == "{}\n"
    assert not dead.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, live.name])


def test_push_leaves_out_the_temporaries_of_killed_writes(tmp_path):
    names = [
        f".arch_optimizer.pt{PART}4242-ab12",  # a torch pickle
        ".best_design.json.x84b_mc8.tmp",  # the form earlier versions wrote
        ".adapter.tmp-4242-zz",
        "adapter_model.safetensors",
        "README.md",
        ".gitattributes",
    ]
    for name in names:
        (tmp_path / name).write_text("x")
    killed_export = tmp_path / ".merged.tmp-4242-zz"  # a killed export's folder: no marker yet, a whole model
    killed_export.mkdir()
    (killed_export / "model.safetensors").write_text("x")
    assert _ignore_not_uploaded(str(tmp_path), [*names, killed_export.name]) == {*names[:3], killed_export.name}


def test_a_replacement_killed_between_its_renames_gets_its_previous_output_back(tmp_path):
    out = tmp_path / "export"
    hidden = tmp_path / f".export.old-{_dead_pid()}-q1" / "previous"  # `out` was moved here, then the run died
    hidden.mkdir(parents=True)
    (hidden / "adapter_config.json").write_text("{}")
    with pytest.warns(UserWarning, match=r"was missing: a run replacing it was killed midway"):
        removed = remove_stale_temporaries(out)
    assert (out / "adapter_config.json").read_text() == "{}"
    assert removed == [hidden.parent] and not hidden.parent.exists()


def test_a_previous_output_is_put_back_before_the_output_folder_is_checked(tmp_path):
    # put back after the check, it made the final re-check refuse the finished run and delete it
    from adapters_hub._files import atomic_output_dir

    out = tmp_path / "run"
    hidden = tmp_path / f".run.old-{_dead_pid()}-q1" / "previous"
    hidden.mkdir(parents=True)
    (hidden / "results.json").write_text("{}")
    entered = []
    with pytest.warns(UserWarning, match="previous output is back"):
        with pytest.raises(FileExistsError, match="already exists and is not empty"):
            with atomic_output_dir(out):
                entered.append(True)  # the work of the run
    assert not entered and (out / "results.json").read_text() == "{}"


# exploration ------------------------------------------------------------------------------------------------------
def test_an_interrupted_exploration_keeps_the_previous_best_config(model, tmp_path, monkeypatch):
    settings = ExploreSettings(data_dir="unused", budget=BUDGET)
    options = {"space": small_space(), "num_samples": 2, "model": model, "progress": False}
    run_exploration(settings, str(tmp_path), evaluator=lambda d: 0.25, **options)
    before = (tmp_path / "best_config" / "adapter_config.json").read_bytes()

    def truncate_then_fail(self, folder, **kwargs):
        open(os.path.join(folder, "adapter_config.json"), "w").close()  # as PEFT's writer does first
        raise KeyboardInterrupt

    monkeypatch.setattr(DesignSpaceConfig, "save_pretrained", truncate_then_fail)
    with pytest.raises(KeyboardInterrupt):
        run_exploration(settings, str(tmp_path), evaluator=lambda d: 0.25, **options)
    assert (tmp_path / "best_config" / "adapter_config.json").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".best_config")]


def test_an_interrupted_plot_keeps_the_previous_one_and_closes_its_figure(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    path = tmp_path / "stage1.png"
    plot_edfs("stage 1", {"a": [0.1, 0.2], "b": [0.3]}, str(path))
    before, open_figures = path.read_bytes(), len(plt.get_fignums())
    monkeypatch.setattr(Figure, "savefig", _full_disk)
    with pytest.raises(OSError, match="No space left"):
        plot_edfs("stage 1", {"a": [0.4]}, str(path))
    assert path.read_bytes() == before
    assert len(plt.get_fignums()) == open_figures
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


# S3PET figures ----------------------------------------------------------------------------------------------------
def test_a_failed_heatmap_leaves_no_earlier_adapters_heatmap_beside_the_new_one(tmp_path, monkeypatch):
    from peft_designspace.s3pet import plot

    first = searched_structure("bert", "SEQ_CLS", seed=1, layers=4)
    get_peft_model(make_model("bert", "SEQ_CLS", layers=4), S3PETConfig(structure=first)).save_pretrained(tmp_path)
    assert (tmp_path / "s3pet_structure.png").is_file()
    second = searched_structure("bert", "SEQ_CLS", seed=2, layers=4)
    model = get_peft_model(make_model("bert", "SEQ_CLS", layers=4), S3PETConfig(structure=second))
    monkeypatch.setattr(plot, "plot_structure", _full_disk)
    with pytest.raises(OSError, match="No space left"):
        model.save_pretrained(tmp_path)
    assert not (tmp_path / "s3pet_structure.png").exists()
    assert json.loads((tmp_path / "adapter_config.json").read_text())["structure"]["modules"] == second["modules"]


def test_a_failed_search_figure_leaves_no_earlier_searchs_figure_beside_the_structure(tmp_path, monkeypatch):
    from test_s3pet_trainer_fixes import _trainer

    from peft_designspace.s3pet import plot

    trainer = _trainer(tmp_path, max_steps=2)
    trainer.train()
    trainer.derive_structure()
    assert (tmp_path / "s3pet_search_trajectory.png").is_file()
    monkeypatch.setattr(plot, "plot_trajectory", _full_disk)
    with pytest.warns(UserWarning, match=r"writing the figures failed \(OSError\).*s3pet_search_trajectory\.png"):
        with pytest.raises(OSError, match="No space left"):
            trainer.derive_structure()
    assert (tmp_path / "s3pet_structure.png").is_file()  # rewritten before the failure
    assert not (tmp_path / "s3pet_search_trajectory.png").exists()


@pytest.fixture(scope="module")
def model():
    return make_model("bert", "SEQ_CLS", hidden=32, layers=8)
