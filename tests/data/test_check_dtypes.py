"""check_data.py agrees with what training and evaluation accept: float16, float64 and big-endian
features, no split of 0 images, and one line (not a false size claim) for an object array."""
import os

import numpy as np
import pytest

import check_data


def _write(folder, features, n_captions=None):
    os.makedirs(folder, exist_ok=True)
    np.save(os.path.join(folder, "test_ims.npy"), features, allow_pickle=True)
    lines = [f"caption {k}" for k in range(5 * len(features) if n_captions is None else n_captions)]
    with open(os.path.join(folder, "test_caps.txt"), "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    return os.path.join(folder, "test_ims.npy")


def _run(tmp_path, capsys):
    code = check_data.main(["--data_path", str(tmp_path), "--no_progress"])
    out, err = capsys.readouterr()
    return code, out, err.splitlines()


@pytest.mark.parametrize("dtype", ["<f2", ">f4", "<f4"])
def test_float16_and_big_endian_features_pass_as_the_loader_reads_them(tmp_path, capsys, dtype):
    _write(str(tmp_path / "mine"), np.ones((2, 3, 4), dtype=dtype))
    code, out, err = _run(tmp_path, capsys)
    assert code == 0 and not [line for line in err if line.startswith("error")], err


def test_float64_features_pass_with_the_loaders_warning(tmp_path, capsys):
    path = _write(str(tmp_path / "mine"), np.ones((2, 3, 4), dtype=np.float64))
    code, out, err = _run(tmp_path, capsys)
    assert code == 0
    assert (f"warning: {path}: float64 features are rounded to float32 when read (float32 or float16 files "
            "hold the same and take less disk)") in err


def test_nan_in_big_endian_features_is_found(tmp_path, capsys):
    features = np.ones((3, 2, 4), dtype=">f4")
    features[2, 1, 3] = np.nan
    path = _write(str(tmp_path / "mine"), features)
    code, out, err = _run(tmp_path, capsys)
    assert code == 2 and f"error: {path}: image 2 holds NaN or infinite region features" in err


def test_a_split_of_0_images_is_an_error_as_in_evaluation(tmp_path, capsys):
    path = _write(str(tmp_path / "mine"), np.ones((0, 36, 4), dtype=np.float32), n_captions=0)
    code, out, err = _run(tmp_path, capsys)
    assert code == 2 and f"error: {path}: holds no region features (shape (0, 36, 4))" in err


def test_an_object_array_gets_one_line_and_no_size_claim(tmp_path, capsys):
    features = np.empty((2, 3, 4), dtype=object)
    features[...] = 1.0
    path = _write(str(tmp_path / "mine"), features)
    code, out, err = _run(tmp_path, capsys)
    errors = [line for line in err if line.startswith("error")]
    assert code == 2 and errors == [(f"error: {path}: expected a 3-D float array (images, regions, features), "
                                     "got shape (2, 3, 4) dtype object (convert with np.save(path, "
                                     "array.astype(np.float32)))")]
