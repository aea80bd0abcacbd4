"""lib/data/check.py and check_data.py: one planted defect per folder, each reported."""
import os

import numpy as np
import pytest

import check_data
from lib.data import check

REGIONS, FEATURES = check.PAPER_REGIONS_FEATURES


SPLITS = {"train": 4, "test": 3}


def write_split(folder, split, n_images, captions_per_image=5, dtype=np.float32, seed=0):
    """Write `{split}_ims.npy` (n_images, 36, 2048) and `{split}_caps.txt` into `folder`."""
    os.makedirs(folder, exist_ok=True)
    features = np.random.default_rng(seed).standard_normal((n_images, REGIONS, FEATURES)).astype(dtype)
    np.save(os.path.join(folder, f"{split}_ims.npy"), features)
    lines = [f"caption {k} of image {i}" for i in range(n_images) for k in range(captions_per_image)]
    with open(os.path.join(folder, f"{split}_caps.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


@pytest.fixture
def folder(tmp_path):
    """A clean `mini_precomp` folder under tmp_path: train 4 images, test 3, 5 captions each."""
    path = tmp_path / "mini_precomp"
    for split, n_images in SPLITS.items():
        write_split(str(path), split, n_images)
    return path


def run(tmp_path, capsys, *extra):
    """check_data.py on tmp_path -> (exit code, stdout lines, stderr lines)."""
    code = check_data.main(["--data_path", str(tmp_path), "--no_progress", *extra])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def table_cells(lines, name):
    """The cells of `name`'s row of the table."""
    return [cell.strip() for cell in next(line for line in lines if line.startswith(name + " ")).split("|")]


def test_a_clean_folder_gets_one_table_and_exit_0(tmp_path, folder, capsys):
    code, out, err = run(tmp_path, capsys)
    assert code == 0 and err == []
    assert out[0].split("|")[0].strip() == "split" and len(out) == 2 + len(SPLITS)
    size = os.path.getsize(folder / "train_ims.npy") + os.path.getsize(folder / "train_caps.txt")
    assert table_cells(out, "mini_precomp/train") == ["mini_precomp/train", "4", "20", check.human_bytes(size), "ok"]
    assert table_cells(out, "mini_precomp/test") == ["mini_precomp/test", "3", "15",
                                                     table_cells(out, "mini_precomp/test")[3], "ok"]


def test_bytes_cut_off_the_end_are_a_truncated_download(tmp_path, folder, capsys):
    path = folder / "train_ims.npy"
    full = os.path.getsize(path)
    os.truncate(path, full - 100)
    code, out, err = run(tmp_path, capsys)
    assert code == 2 and out == []
    assert err == [(f"error: {path}: truncated: {full - 100} bytes, its header announces {full} "
                   f"(only 3 of 4 images complete); download it again")]


def test_bytes_after_the_array_are_reported(tmp_path, folder, capsys):
    path = folder / "test_ims.npy"
    with open(path, "ab") as f:
        f.write(b"\0" * 7)
    code, _, err = run(tmp_path, capsys)
    assert code == 2 and err == [(f"error: {path}: 7 bytes after the end of the array its header announces; "
                                 "the file is damaged, download it again")]


@pytest.mark.parametrize("chunk_images", [1, 2, 100])
def test_nan_names_its_image_whatever_the_chunk_size(tmp_path, folder, capsys, monkeypatch, chunk_images):
    monkeypatch.setattr(check, "CHUNK_BYTES", chunk_images * REGIONS * FEATURES * 4)
    path = folder / "train_ims.npy"
    features = np.load(path)
    features[2, 35, 2047] = np.nan
    np.save(path, features)
    code, _, err = run(tmp_path, capsys)
    assert code == 2 and err == [f"error: {path}: image 2 holds NaN or infinite region features"]


def test_an_image_with_4_captions_breaks_the_count(tmp_path, folder, capsys):
    path = folder / "test_caps.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    del lines[7]  # image 1 keeps 4 captions
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, _, err = run(tmp_path, capsys)
    assert code == 2 and err == [(f"error: {path}: 14 captions for 3 images in test_ims.npy "
                                 "(need 5 per image or 1 per image)")]


def test_a_2d_array_is_an_error(tmp_path, folder, capsys):
    path = folder / "train_ims.npy"
    np.save(path, np.zeros((4, FEATURES), dtype=np.float32))
    code, _, err = run(tmp_path, capsys)
    assert code == 2 and err == [(f"error: {path}: a 2-D array of shape (4, 2048), expected 3-D "
                                 "(images, regions, features) such as (n, 36, 2048)")]


def test_a_file_that_is_not_npy_is_named(tmp_path, folder, capsys):
    path = folder / "train_ims.npy"
    path.write_text("<html>404 Not Found</html>")
    code, _, err = run(tmp_path, capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {path}: not a .npy file (")


def test_missing_folder_and_missing_partner_file_one_line_each(tmp_path, folder, capsys):
    os.remove(folder / "test_caps.txt")
    code, _, err = run(tmp_path, capsys, "--data_name", "mini_precomp", "absent_precomp")
    assert code == 2
    assert err == [(f"error: {folder / 'test_caps.txt'}: split file not found (each split needs test_ims.npy "
                    "and test_caps.txt)"),
                   f"error: {tmp_path / 'absent_precomp'}: data folder not found (check --data_path and --data_name)"]


def test_an_unreadable_file_is_named(tmp_path, folder, capsys, monkeypatch):
    # Tests may run as root, for whom chmod 000 still reads: deny through os.access instead.
    path = str(folder / "train_caps.txt")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: str(p) != path and real_access(p, mode))
    code, _, err = run(tmp_path, capsys)
    assert code == 2 and err == [f"error: {path}: not readable (permission denied)"]


def test_header_errors_come_before_the_long_pass(tmp_path, folder, capsys):
    """A truncated train file stops the check before the test split's NaN is read."""
    os.truncate(folder / "train_ims.npy", os.path.getsize(folder / "train_ims.npy") - 1)
    features = np.load(folder / "test_ims.npy")
    features[0, 0, 0] = np.inf
    np.save(folder / "test_ims.npy", features)
    code, _, err = run(tmp_path, capsys)
    assert code == 2 and len(err) == 1 and "train_ims.npy: truncated" in err[0]


@pytest.mark.parametrize("content, message", [
    ("a\nb\n\nd\ne\n", "line 3 is empty"),
    ("a\nb\nc\nd caf\xe9\ne\n", "line 4 is not valid UTF-8 (byte 6 of the line)"),
])
def test_bad_caption_lines_use_the_loaders_rules(tmp_path, capsys, content, message):
    folder = tmp_path / "mini_precomp"
    write_split(str(folder), "train", 1)
    (folder / "train_caps.txt").write_bytes(content.encode("latin-1"))
    code, _, err = run(tmp_path, capsys)
    assert code == 2 and err == [f"error: {folder / 'train_caps.txt'}: {message}"]


def test_karpathy_folders_with_other_counts_get_warnings_not_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(check.KARPATHY_IMAGES, "f30k_precomp", {"train": 4, "dev": 2, "test": 2})
    folder = tmp_path / "f30k_precomp"
    write_split(str(folder), "train", 4)
    write_split(str(folder), "test", 3)
    code, out, err = run(tmp_path, capsys)
    assert code == 0
    assert err == [f"warning: {folder}: no dev split (the paper's splits are train, dev, test)",
                   (f"warning: {folder / 'test_ims.npy'}: 3 images, the Karpathy test split has 2: "
                    "fine for your own data, not for the paper's figures")]
    assert table_cells(out, "f30k_precomp/train")[-1] == "warning"  # carries the folder's missing dev
    assert table_cells(out, "f30k_precomp/test")[-1] == "warning"


def test_one_caption_per_image_and_other_feature_sizes_are_warnings(tmp_path, capsys):
    folder = tmp_path / "own_precomp"
    os.makedirs(folder)
    np.save(folder / "train_ims.npy", np.ones((2, 10, 64), dtype=np.float32))
    (folder / "train_caps.txt").write_text("one\ntwo\n", encoding="utf-8")
    code, out, err = run(tmp_path, capsys)
    assert code == 0 and table_cells(out, "own_precomp/train")[1:3] == ["2", "2"]
    assert err == [(f"warning: {folder / 'train_ims.npy'}: 10 regions of 64 features per image, the paper's "
                    "BUTD features are 36 x 2048"),
                   f"warning: {folder / 'train_caps.txt'}: 1 caption per image, the paper's splits have 5"]


def test_a_data_path_without_split_folders_says_what_to_pass(tmp_path, folder, capsys):
    code, _, err = run(folder, capsys)
    assert code == 2 and err == [(f"error: {folder}: holds split files itself; pass its parent folder as "
                                 "--data_path and --data_name mini_precomp")]
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(empty, capsys)
    assert code == 2 and err[0].startswith(f"error: {empty}: no sub-folder holds {{split}}_ims.npy")
