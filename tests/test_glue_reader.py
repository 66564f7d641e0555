"""The offline GLUE TSV reader: every bad file is one `ValueError` naming the file and the line."""

import csv
from pathlib import Path

import numpy as np
import pytest

from trainer_ext.glue import load_glue_folder

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def _folder(tmp_path, train: bytes, dev: bytes = b"sentence\tlabel\nfine\t1\n", name="SST-2") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "train.tsv").write_bytes(train)
    (folder / "dev.tsv").write_bytes(dev)
    return folder


def test_a_byte_order_mark_and_blank_lines_before_the_header_are_accepted(tmp_path):
    folder = _folder(tmp_path, b"\xef\xbb\xbf\nsentence\tlabel\r\ngood film\t1\r\n\r\nbad plot\t0\r\n")
    rows = load_glue_folder(folder)["train"]
    assert rows == [{"sentence": "good film", "label": 1}, {"sentence": "bad plot", "label": 0}]


def test_a_field_over_the_csv_limit_names_the_file_and_line(tmp_path):
    long = b"x" * (csv.field_size_limit() + 10)
    folder = _folder(tmp_path, b"sentence\tlabel\ngood\t1\n" + long + b"\t1\n")
    with pytest.raises(ValueError, match=r"train\.tsv, line 3: field larger than field limit"):
        load_glue_folder(folder)


def test_text_that_is_not_utf8_names_the_file(tmp_path):
    folder = _folder(tmp_path, b"sentence\tlabel\ncaf\xe9\t1\n")
    with pytest.raises(ValueError, match=r"train\.tsv: not UTF-8 text \(byte 0xe9 at offset \d+\); save it as UTF-8"):
        load_glue_folder(folder)


def test_a_wrong_header_names_its_line(tmp_path):
    folder = _folder(tmp_path, b"\n\ntext\tlabel\ngood\t1\n")
    with pytest.raises(ValueError, match=r"train\.tsv, line 3: expected the SST-2 header row"):
        load_glue_folder(folder)


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data/glue beside the project")
@pytest.mark.parametrize("task", ["SST-2", "RTE", "CoLA"])
def test_the_shared_glue_folders_still_load(task):
    data = load_glue_folder(SHARED / task)
    assert len(data["train"]) > 100 and len(data["dev"]) > 100
    assert {row["label"] for row in data["train"]} == {0, 1}


@pytest.mark.parametrize("seed", [None, "abc", 1.5, True])
def test_split_validation_takes_only_an_int_seed(seed):
    # None seeded from the OS: a different validation split on every call, where the docstring promises one
    from trainer_ext.glue import split_validation

    rows = [{"sentence": str(i), "label": i % 2} for i in range(10)]
    with pytest.raises(TypeError, match=r"`seed` must be an int"):
        split_validation(rows, seed=seed)
    assert split_validation(rows, seed=3) == split_validation(rows, seed=3)


@pytest.mark.parametrize(
    ("rows", "num_labels", "match"),
    [
        ([{"sentence": "a"}, {"sentence": "b", "label": 1.7}], None, r"rows\[0\]\['label'\] must be a non-negative"),
        ([{"sentence": "a", "label": 1}, {"sentence": "b", "label": 1.7}], None, r"rows\[1\].* got 1\.7"),
        ([{"sentence": "a", "label": "positive"}], None, r"rows\[0\].* got 'positive'"),
        ([{"sentence": "a", "label": True}], None, r"rows\[0\].* got True"),
        ([{"sentence": "a", "label": -1}], None, r"rows\[0\].* got -1"),
        (
            [{"sentence": "a", "label": 0}, {"sentence": "b", "label": 2}],
            2,
            r"rows\[1\]\['label'\] is 2, out of range",
        ),
        ([{"sentence": "a", "label": 0}], 0, r"`num_labels` must be a positive int or None, got 0"),
    ],
)
def test_tokenize_glue_names_a_bad_label(rows, num_labels, match, tiny):
    """`int(row["label"])` took 1.7 as 1 and True as 1, a missing label was a bare KeyError, and a label out of the
    classifier's range failed only inside the loss, mid-training."""
    from transformers import AutoTokenizer

    from trainer_ext import tokenize_glue

    tokenizer = AutoTokenizer.from_pretrained(tiny / "model")
    with pytest.raises(ValueError, match=match):
        tokenize_glue(rows, tokenizer, num_labels=num_labels)
    import torch

    rows = [{"sentence": "a", "label": np.int64(1)}, {"sentence": "b", "label": 0}]
    rows += [{"sentence": "c", "label": np.array(1)}, {"sentence": "d", "label": torch.tensor(0)}]
    assert tokenize_glue(rows, tokenizer, num_labels=2)["labels"] == [1, 0, 1, 0]
    with pytest.raises(ValueError, match=r"rows\[0\].* got tensor\(True\)"):
        tokenize_glue([{"sentence": "a", "label": torch.tensor(True)}], tokenizer)
