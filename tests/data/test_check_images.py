"""check_data.py on raw-image dataset folders (lib/data/check.py: check_image_dataset)."""
import json
import os

import numpy as np
import pytest
from PIL import Image

import check_data
from lib.data import check, images


def write_dataset(root, n_train=3, n_test=2, shared=0, name="mine"):
    """A raw-image dataset `root/name`: PNG images, ids one per image, 5 captions each.

    The first `shared` test images are the same files as train's. Returns the folder.
    """
    data_path = os.path.join(root, name)
    folder = os.path.join(data_path, "flickr30k-images")
    os.makedirs(folder)
    os.makedirs(os.path.join(data_path, "precomp"))
    rng = np.random.default_rng(0)
    mapping = {}
    for i in range(n_train + n_test):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(os.path.join(folder, f"{i}.png"))
        mapping[str(i)] = f"{i}.png"
    with open(os.path.join(data_path, "id_mapping.json"), "w") as f:
        json.dump(mapping, f)
    split_ids = {"train": list(range(n_train)),
                 "test": list(range(shared)) + list(range(n_train, n_train + n_test - shared))}
    for split, ids in split_ids.items():
        with open(os.path.join(data_path, "precomp", f"{split}_ids.txt"), "w") as f:
            f.write("\n".join(map(str, ids)) + "\n")
        with open(os.path.join(data_path, "precomp", f"{split}_caps.txt"), "w") as f:
            f.write("\n".join(f"a dog {i}" for i in range(5 * len(ids))) + "\n")
    return data_path


def run(capsys, data_path, *extra, progress=False):
    code = check_data.main(["--data_path", data_path, *extra] + ([] if progress else ["--no_progress"]))
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def image_path(data_path, i):
    return os.path.join(data_path, "flickr30k-images", f"{i}.png")


def test_a_clean_dataset_gets_one_table(tmp_path, capsys):
    data_path = write_dataset(str(tmp_path))
    code, out, err = run(capsys, data_path)
    assert code == 0 and err == []
    row = [cell.strip() for cell in out[2].split("|")]
    text_bytes = sum(os.path.getsize(os.path.join(data_path, "precomp", f"train_{kind}.txt")) for kind in ("caps", "ids"))
    image_bytes = sum(os.path.getsize(image_path(data_path, i)) for i in range(3))
    assert row == ["mine/train", "3", "15", check.human_bytes(text_bytes + image_bytes), "ok"]
    assert [cell.strip() for cell in out[3].split("|")][:3] == ["mine/test", "2", "10"]


def test_counts_other_than_karpathys_are_warnings_for_f30k_and_coco(tmp_path, capsys):
    code, out, err = run(capsys, write_dataset(str(tmp_path), name="f30k"))
    assert code == 0 and "| warning" in out[2]
    assert err[0].endswith("train_ids.txt: 3 images, the Karpathy train split has 29000: fine for your own data, "
                           "not for the paper's figures")


def test_the_progress_bar_counts_images(tmp_path, capsys):
    code, _, err = run(capsys, write_dataset(str(tmp_path)), progress=True)
    assert code == 0 and "decode" in "".join(err) and "5/5" in "".join(err)


def test_each_file_is_decoded_once_even_when_splits_share_it(tmp_path, monkeypatch):
    data_path = write_dataset(str(tmp_path), n_train=3, n_test=3, shared=2)
    decoded = []
    real = images.read_rgb
    monkeypatch.setattr(images, "read_rgb", lambda path: decoded.append(path) or real(path))
    reports = check.check_image_dataset(data_path, progress=False)
    assert sorted(decoded) == [image_path(data_path, i) for i in range(4)]
    assert [report.n_images for report in reports] == [3, 3] and all(r.status == "ok" for r in reports)


def test_handled_images_are_warnings_and_truncated_ones_errors(tmp_path, capsys):
    data_path = write_dataset(str(tmp_path), n_train=4, n_test=2)
    Image.fromarray(np.zeros((6, 6), dtype=np.uint8), "L").save(image_path(data_path, 0))
    Image.fromarray(np.zeros((6, 6, 4), dtype=np.uint8), "RGBA").save(image_path(data_path, 1))
    cmyk_path = os.path.join(data_path, "flickr30k-images", "2.png")
    Image.fromarray(np.zeros((6, 6, 4), dtype=np.uint8), "CMYK").save(cmyk_path, format="JPEG")
    code, out, err = run(capsys, data_path)
    assert code == 0
    assert f"warning: mine/train: 1 grey images, read as three equal channels (first: {image_path(data_path, 0)})" in err
    assert any(line.startswith("warning: mine/train: 1 images with transparency") for line in err)
    assert any(line.startswith("warning: mine/train: 1 CMYK images") for line in err)
    assert "| warning" in out[2]
    broken = image_path(data_path, 5)
    with open(broken, "rb") as f:
        data = f.read()
    with open(broken, "wb") as f:
        f.write(data[:len(data) // 2])
    code, out, err = run(capsys, data_path)
    assert code == 2 and out == []
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {broken}: truncated image file (")
    assert errors[0].endswith("; copy or download it again")


def test_many_bad_files_are_listed_up_to_ten(tmp_path, capsys):
    data_path = write_dataset(str(tmp_path), n_train=13, n_test=1)
    for i in range(13):
        with open(image_path(data_path, i), "w") as f:
            f.write("x")
    code, _, err = run(capsys, data_path)
    errors = [line for line in err if line.startswith("error:")]
    assert code == 2 and len(errors) == 11
    assert errors[-1] == "error: mine/train: 3 more image files cannot be decoded"


@pytest.mark.parametrize("defect, message", [
    ("missing file", "3.png: image file not found (1 of the 2 images of test missing"),
    ("unknown id", "test_ids.txt: image id 77 is not in id_mapping.json"),
    ("count", "test_ids.txt: 3 image ids for 10 captions in test_caps.txt"),
])
def test_layout_defects_are_reported_before_decoding(tmp_path, capsys, monkeypatch, defect, message):
    data_path = write_dataset(str(tmp_path))
    ids_path = os.path.join(data_path, "precomp", "test_ids.txt")
    if defect == "missing file":
        os.remove(image_path(data_path, 3))
    else:
        with open(ids_path, "w") as f:
            f.write("3\n77\n" if defect == "unknown id" else "3\n4\n3\n")
    monkeypatch.setattr(images, "read_rgb", lambda path: pytest.fail("decoded despite a layout error"))
    code, out, err = run(capsys, data_path)
    assert code == 2 and out == [] and len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_workers_find_the_same(tmp_path, capsys):
    data_path = write_dataset(str(tmp_path))
    with open(image_path(data_path, 4), "w") as f:
        f.write("x")
    assert run(capsys, data_path, "--workers", "2")[2] == run(capsys, data_path)[2]


def test_image_root_and_data_name_choose_the_folder(tmp_path, capsys):
    data_path = write_dataset(str(tmp_path))
    code, _, err = run(capsys, data_path, "--data_name", "coco")
    assert code == 2 and err == [f"error: {os.path.join(data_path, 'images')}: image folder not found "
                                 "(images go in flickr30k-images/ or, for a --data_name containing coco, images/ "
                                 "under --data_path; --image_root names another folder)"]
    elsewhere = str(tmp_path / "elsewhere")
    os.rename(os.path.join(data_path, "flickr30k-images"), elsewhere)
    assert run(capsys, data_path, "--image_root", elsewhere)[0] == 0
    code, _, err = run(capsys, str(tmp_path), "--image_root", elsewhere)
    assert code == 2 and "--image_root is for a raw-image dataset folder" in err[0]


def test_a_dataset_folder_without_split_files_is_one_line(tmp_path, capsys):
    data_path = write_dataset(str(tmp_path))
    for name in os.listdir(os.path.join(data_path, "precomp")):
        os.remove(os.path.join(data_path, "precomp", name))
    code, out, err = run(capsys, data_path)
    assert code == 2 and out == []
    assert err == [f"error: {os.path.join(data_path, 'precomp')}: holds no {{split}}_caps.txt / {{split}}_ids.txt files"]
