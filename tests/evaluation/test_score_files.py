"""lib/evaluation/score_files.py: score files, official dicts, ensembles and their atomic writes."""
import os
import pickle

import numpy as np
import pytest
from helpers import one_error_line, run_main

import eval as eval_cli
from lib.errors import XDimError
from lib.evaluation import score_files


def test_score_file_round_trip(tmp_path):
    sims = np.random.default_rng(0).random((4, 20)).astype(np.float32)
    path = tmp_path / "s.npy"
    score_files.save_score_file(sims, path)
    assert np.array_equal(np.load(path, allow_pickle=False), sims)
    assert np.array_equal(score_files.load_score_file(path), sims)


def test_official_dict_score_file_is_read(tmp_path):
    sims = np.random.default_rng(1).random((3, 15))
    path = tmp_path / "official.npy"
    np.save(path, {"npts": 3, "sims": sims}, allow_pickle=True)
    loaded = score_files.load_score_file(path)
    assert loaded.dtype == np.float32
    np.testing.assert_allclose(loaded, sims, rtol=1e-6)


def test_official_dict_written_by_numpy_1_is_read(tmp_path):
    """Pickles from numpy 1.x name numpy.core.multiarray, not numpy._core."""
    sims = np.arange(6, dtype=np.float64).reshape(1, 6)[:, :5]
    obj = np.empty((), dtype=object)
    obj[()] = {"npts": 1, "sims": np.ascontiguousarray(sims)}
    path = tmp_path / "old.npy"
    np.save(path, obj, allow_pickle=True)
    raw = path.read_bytes()
    if b"numpy._core.multiarray" in raw:  # rewrite as numpy 1 would have written it
        header_end = raw.index(b"\n") + 1
        body = pickle.loads(raw[header_end:])  # our own file, just written
        data = pickle.dumps(body, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        path.write_bytes(raw[:header_end] + data)
    np.testing.assert_allclose(score_files.load_score_file(path), sims)


class _Sneaky:
    def __reduce__(self):
        return (os.getcwd, ())


def test_score_file_with_foreign_objects_is_refused(tmp_path):
    path = tmp_path / "evil.npy"
    np.save(path, {"npts": 1, "sims": _Sneaky()}, allow_pickle=True)
    with pytest.raises(XDimError, match="evil.npy"):
        score_files.load_score_file(path)
    other = tmp_path / "list.npy"
    np.save(other, np.array([[1, 2]], dtype=object), allow_pickle=True)
    with pytest.raises(XDimError, match="list.npy"):
        score_files.load_score_file(other)
    with pytest.raises(XDimError, match="missing.npy"):
        score_files.load_score_file(tmp_path / "missing.npy")
    mismatch = tmp_path / "npts.npy"
    np.save(mismatch, {"npts": 7, "sims": np.zeros((2, 10))}, allow_pickle=True)
    with pytest.raises(XDimError, match="npts"):
        score_files.load_score_file(mismatch)


def test_ensemble_averages_and_checks_shapes():
    a = np.ones((2, 10), np.float32)
    b = 3 * np.ones((2, 10), np.float32)
    assert np.array_equal(score_files.ensemble_sims([a, b]), 2 * a)
    with pytest.raises(XDimError, match="shape"):
        score_files.ensemble_sims([a, np.ones((2, 5), np.float32)])
    assert score_files.infer_captions_per_image(a, "x") == 5
    with pytest.raises(XDimError, match="x:"):
        score_files.infer_captions_per_image(np.ones((2, 7)), "x")


def test_ensemble_divides_by_the_number_of_matrices():
    # catches: the sum divided by the number of images (rows) instead of matrices.
    rng = np.random.default_rng(1)
    matrices = [rng.standard_normal((2, 10)).astype(np.float32) for _ in range(3)]
    expected = np.mean(np.stack(matrices).astype(np.float64), axis=0)
    np.testing.assert_allclose(score_files.ensemble_sims(matrices), expected, rtol=0, atol=1e-6)


def test_save_sims_over_an_existing_file_on_a_full_disk_keeps_it(tmp_path, full_disk):
    scores = np.arange(500, dtype=np.float32).reshape(10, 50) / 500
    np.save(tmp_path / "in.npy", scores)
    previous = np.ones((10, 50), np.float32)
    np.save(tmp_path / "out.npy", previous)
    full_disk("out.npy", 100)
    run = run_main(eval_cli.main, ["--ensemble", str(tmp_path / "in.npy"), "--save_sims",
                                   str(tmp_path / "out.npy")], expect=None)
    message = one_error_line(run)
    assert message.startswith(f"{tmp_path / 'out.npy'}: not written, disk full (2,000 bytes to write, ")
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), previous)
    assert sorted(os.listdir(tmp_path)) == ["in.npy", "out.npy"]


def test_save_sims_without_the_npy_ending_still_gets_it(tmp_path):
    scores = np.arange(500, dtype=np.float32).reshape(10, 50) / 500
    np.save(tmp_path / "in.npy", scores)
    run_main(eval_cli.main, ["--ensemble", str(tmp_path / "in.npy"), "--save_sims", str(tmp_path / "out")])
    assert sorted(os.listdir(tmp_path)) == ["in.npy", "out.npy"]
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), scores)
