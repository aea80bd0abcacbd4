"""retrieve.py: errors naming the option (numbers at their boundaries for every command), the FAISS install
hint."""
import json
import os
import shutil
import sys

import numpy as np
import pytest
from helpers import _query_error

import retrieve
from lib.errors import XDimError
from lib.retrieval import index as retrieval


@pytest.mark.parametrize("content, message", [
    (None, "is a folder, give a text file with one query per line"),
    ("", "is empty, give one query per line"),
    ("\n", "is empty, give one query per line"),
])
def test_queries_file_problems_name_the_option(tmp_path, capsys, content, message):
    path = tmp_path / "questions"
    if content is None:
        path.mkdir()
    else:
        path.write_text(content, encoding="utf-8")
    # Checked before the index or the model is read: neither exists here.
    assert retrieve.main(["query", "--index", str(tmp_path / "no_index"), "--queries", str(path)]) == 2
    assert capsys.readouterr().err == f"error: --queries {path}: {message}\n"


def test_missing_queries_file_names_the_option(tmp_path, capsys):
    path = tmp_path / "nope.txt"
    assert retrieve.main(["query", "--index", str(tmp_path), "--queries", str(path)]) == 2
    assert capsys.readouterr().err == f"error: --queries {path}: no such file\n"


def test_query_errors(setup, capsys, tmp_path):
    index, caps = setup["images_index"], setup["captions_index"]
    assert "empty query" in _query_error(["query", "--index", index, "--query", "   "], capsys)
    assert "out of range" in _query_error(["query", "--index", caps, "--image_index", "10"], capsys)
    assert "an image gallery cannot answer image queries" in _query_error(
        ["query", "--index", index, "--image_index", "0"], capsys)
    assert "a caption gallery cannot answer text queries" in _query_error(
        ["query", "--index", caps, "--query", "a dog"], capsys)
    assert "no such index folder" in _query_error(["query", "--index", str(tmp_path / "x"), "--query", "a"],
                                                  capsys)
    empty_line = tmp_path / "q.txt"
    empty_line.write_text("a dog\n\na cat\n", encoding="utf-8")
    assert "q.txt: line 2 is empty" in _query_error(["query", "--index", index, "--queries", str(empty_line)],
                                                    capsys)
    assert "--json /nowhere/x.json: folder /nowhere does not exist" in _query_error(
        ["query", "--index", index, "--query", "a dog", "--json", "/nowhere/x.json"], capsys)
    manifest = json.load(open(os.path.join(index, "manifest.json")))
    broken = tmp_path / "broken"
    shutil.copytree(index, broken)
    json.dump(dict(manifest, model="not a dict"), open(broken / "manifest.json", "w"))
    assert "manifest.json: damaged, field 'model' is str, expected dict; rebuild the index" in _query_error(
        ["query", "--index", str(broken), "--query", "a dog"], capsys)


def test_missing_faiss_gives_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(XDimError, match=r"^FAISS is not installed: pip install faiss-cpu$"):
        retrieval.exact_shortlist(np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32), 1)


DISTILL = ["distill", "--model_path", "missing.pth"]
BUILD = ["build", "--model_path", "missing.pth", "--images", "missing_ims.npy", "--index", "idx"]
QUERY = ["query", "--index", "idx", "--query", "a dog"]


@pytest.mark.parametrize("command, option, value, requirement", [
    *[(DISTILL, "--learning_rate", value, "must be a positive number") for value in ("0", "-0.002", "nan", "inf")],
    *[(DISTILL, option, value, "must be at least 1")
      for option in ("--epochs", "--batch_images", "--size", "--group") for value in ("0", "-1")],
    (BUILD, "--batch_size", "0", "must be at least 1"),
    (QUERY, "--top_k", "0", "must be at least 1"),
    (QUERY, "--shortlist", "0", "must be at least 1"),
    (QUERY, "--shortlist", "-3", "must be at least 1"),
])
def test_out_of_range_number_is_one_error_line_before_any_file_is_read(tmp_path, monkeypatch, capsys,
                                                                       command, option, value, requirement):
    # catches: --learning_rate of distill left unchecked (0 trains a head that never moves),
    # a build --batch_size 0 reaching the encoder, `< 0` for `< 1`.
    monkeypatch.chdir(tmp_path)
    assert retrieve.main([*command, f"{option}={value}"]) == 2
    shown = float(value) if option == "--learning_rate" else value
    assert capsys.readouterr().err.splitlines() == [f"error: {option} {shown}: {requirement}"]
    assert list(tmp_path.iterdir()) == []
