"""Raw images (lib.data.images): the official layout, decoding, the pixel pipeline, the loaders.

Small JPEG/PNG folders are written by the tests. The resize is compared with a float64
reference written out here from the definition (half-pixel centres, edge pixels repeated)
and, when opencv-python-headless is installed (requirements-tests.txt), with OpenCV itself.
"""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from lib.data import images
from lib.data.images import (
    PixelConfig,
    crop_window,
    image_eval_batches,
    image_train_loader,
    normalize,
    open_image_split,
    pixel_tensor,
    read_rgb,
    resize_linear,
)
from lib.data.precomp import CaptionTokenizer, set_loader_epoch
from lib.data.synthetic import write_demo_images
from lib.errors import XDimError
from lib.model.bert import load_tokenizer

# ---------------------------------------------------------------- helpers


def reference_resize(image, out_h, out_w):
    """float64 bilinear resize with half-pixel centres, by the definition: image (H, W, C)."""
    h, w = image.shape[:2]
    out = np.zeros((out_h, out_w, image.shape[2]))
    for y in range(out_h):
        sy = min(max((y + 0.5) * h / out_h - 0.5, 0.0), h - 1)
        y0 = int(np.floor(sy))
        y1, fy = min(y0 + 1, h - 1), sy - y0
        for x in range(out_w):
            sx = min(max((x + 0.5) * w / out_w - 0.5, 0.0), w - 1)
            x0 = int(np.floor(sx))
            x1, fx = min(x0 + 1, w - 1), sx - x0
            top = (1 - fx) * image[y0, x0] + fx * image[y0, x1]
            bottom = (1 - fx) * image[y1, x0] + fx * image[y1, x1]
            out[y, x] = (1 - fy) * top + fy * bottom
    return out


# Both the library and OpenCV compute each source coordinate in float32, whose rounding (about 1e-6
# at coordinates near 10, 3e-5 near 500) moves an interpolation weight by that much: up to 3e-4 on
# 0..255 pixels for the small images here, which a mistaken formula (a missing half-pixel shift,
# align_corners, an antialiasing filter) exceeds by far (0.1 to tens).
FLOAT32_COORDINATE_ATOL = 1e-3


def chw(image):
    """(H, W, C) numpy -> (C, H, W) float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)


class FixedDraws:
    """A stand-in for np.random.Generator returning given values: random() from `uniforms`,
    integers(low, high) from `offsets` (asserted to lie in [low, high))."""

    def __init__(self, uniforms, offsets):
        self.uniforms, self.offsets = list(uniforms), list(offsets)

    def random(self):
        return self.uniforms.pop(0)

    def integers(self, low, high):
        value = self.offsets.pop(0)
        assert low <= value < high
        return value


def write_layout(root, n_images=4, ids_per_caption=False, coco=False, sizes=None):
    """A raw-image dataset folder with random JPEGs: (data_path, data_name, rgb arrays by id)."""
    data_path = os.path.join(root, "data")
    folder = os.path.join(data_path, "images" if coco else "flickr30k-images", "sub")
    os.makedirs(folder)
    os.makedirs(os.path.join(data_path, "precomp"))
    rng = np.random.default_rng(0)
    arrays, mapping = {}, {}
    for i in range(n_images):
        h, w = (sizes or {}).get(i, (30 + i, 40))
        arrays[str(100 + i)] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arrays[str(100 + i)]).save(os.path.join(folder, f"{i}.png"))
        mapping[str(100 + i)] = f"sub/{i}.png"
    with open(os.path.join(data_path, "id_mapping.json"), "w") as f:
        json.dump(mapping, f)
    ids = [str(100 + i) for i in range(n_images) for _ in range(5 if ids_per_caption else 1)]
    for split in ("train", "test"):
        with open(os.path.join(data_path, "precomp", f"{split}_ids.txt"), "w") as f:
            f.write("\n".join(ids) + "\n")
        with open(os.path.join(data_path, "precomp", f"{split}_caps.txt"), "w") as f:
            f.write("\n".join(f"a dog and a cat {i}" for i in range(5 * n_images)) + "\n")
    return data_path, "coco" if coco else "f30k", arrays


@pytest.fixture(scope="module")
def demo_images(tmp_path_factory):
    """The demo written as 32 x 32 JPEGs: (data_path, data_name)."""
    data_path, data_name, _ = write_demo_images(str(tmp_path_factory.mktemp("demo_images")),
                                                sizes={"train": 12, "test": 6}, size=32, with_bert=False)
    return data_path, data_name


@pytest.fixture(scope="module")
def encoder(tiny_bert_dir):
    return CaptionTokenizer(load_tokenizer(tiny_bert_dir), 64)


# ---------------------------------------------------------------- resize


@pytest.mark.parametrize("in_shape, out_size", [((37, 53), 16), ((7, 5), 20), ((9, 30), 12)])
def test_resize_equals_the_float64_definition(in_shape, out_size):
    image = np.random.default_rng(1).uniform(0, 255, in_shape + (3,))
    expected = reference_resize(image, out_size, out_size)
    got = resize_linear(chw(image), out_size).permute(1, 2, 0).double().numpy()
    assert got.shape == (out_size, out_size, 3)
    np.testing.assert_allclose(got, expected, atol=FLOAT32_COORDINATE_ATOL)


@pytest.mark.parametrize("in_shape, out_size", [((375, 500), 512), ((375, 500), 128), ((61, 43), 64),
                                                 ((64, 64), 32)])
def test_resize_equals_opencv_inter_linear_on_float32(in_shape, out_size):
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (requirements-tests.txt)")
    image = np.random.default_rng(2).integers(0, 256, in_shape + (3,)).astype(np.float32)
    h, w = in_shape
    expected = cv2.resize(image, None, None, fx=out_size / w, fy=out_size / h, interpolation=cv2.INTER_LINEAR)
    got = resize_linear(chw(image), out_size).permute(1, 2, 0).numpy()
    assert expected.shape == got.shape
    np.testing.assert_allclose(got, expected, atol=FLOAT32_COORDINATE_ATOL)


# ---------------------------------------------------------------- crop, flip, normalisation


def test_crop_window_keeps_the_ratio_and_reaches_every_offset():
    rng = np.random.default_rng(0)
    windows = [crop_window(50, 80, rng) for _ in range(2000)]
    for top, left, h, w in windows:
        assert 30 <= h <= 50 and int(80 * h / 50) <= w <= int(80 * (h + 1) / 50)  # one ratio, h = int(50 r)
        assert 0 <= top <= 50 - h and 0 <= left <= 80 - w
    smallest = min(windows, key=lambda window: window[2])
    assert smallest[2] <= 31
    assert any(top == 50 - h for top, _, h, _ in windows if h < 50)
    assert any(left == 80 - w for _, left, _, w in windows if w < 80)


def test_crop_window_uses_one_ratio_for_both_sides():
    top, left, h, w = crop_window(100, 200, FixedDraws([0.5], [3, 7]))
    assert (h, w) == (80, 160) and (top, left) == (3, 7)


def test_training_pixels_are_the_crop_resized_and_flipped():
    rgb = np.random.default_rng(3).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    config = PixelConfig(16, "imagenet")
    # ratio 0.6 + 0.4 * 0.25 = 0.7 -> crop 28 x 42 at (5, 11); flip draw 0.1 < 0.5 -> flipped
    flipped = pixel_tensor(rgb, config, FixedDraws([0.25, 0.1], [5, 11]))
    kept = pixel_tensor(rgb, config, FixedDraws([0.25, 0.9], [5, 11]))
    crop = rgb[5:33, 11:53].astype(np.float64)
    expected = (reference_resize(crop, 16, 16) / 255 - images.IMAGENET_MEAN) / images.IMAGENET_STD
    atol = FLOAT32_COORDINATE_ATOL / 255 / min(images.IMAGENET_STD)
    np.testing.assert_allclose(kept.permute(1, 2, 0).numpy(), expected, atol=atol)
    np.testing.assert_allclose(flipped.permute(1, 2, 0).numpy(), expected[:, ::-1], atol=atol)


def test_evaluation_pixels_are_the_whole_image_resized():
    rgb = np.random.default_rng(4).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    got = pixel_tensor(rgb, PixelConfig(24, "detector"))
    expected = reference_resize(rgb.astype(np.float64), 24, 24)[:, :, ::-1] - images.DETECTOR_MEANS_BGR
    assert got.shape == (3, 24, 24) and got.dtype == torch.float32
    np.testing.assert_allclose(got.permute(1, 2, 0).numpy(), expected, atol=FLOAT32_COORDINATE_ATOL)


def test_normalisations_by_hand():
    rgb = torch.tensor([10.0, 20.0, 30.0])[:, None, None].expand(3, 2, 2)
    detector = normalize(rgb, "detector")[:, 0, 0]
    assert torch.allclose(detector, torch.tensor([30 - 102.9801, 20 - 115.9465, 10 - 122.7717]))
    imagenet = normalize(rgb, "imagenet")[:, 0, 0]
    expected = [(10 / 255 - 0.485) / 0.229, (20 / 255 - 0.456) / 0.224, (30 / 255 - 0.406) / 0.225]
    assert torch.allclose(imagenet, torch.tensor(expected))


def test_pixel_config():
    assert PixelConfig.for_backbone("detector", 2.0) == PixelConfig(512, "detector")
    assert PixelConfig.for_backbone("wsl", 0.25) == PixelConfig(64, "imagenet")
    with pytest.raises(XDimError, match="unknown image normalization 'bgr'"):
        PixelConfig(256, "bgr")


# ---------------------------------------------------------------- decoding


def test_grey_image_becomes_three_equal_channels(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    rgb, conversion = read_rgb(str(tmp_path / "g.png"))
    assert conversion == "grey" and rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(rgb[:, :, channel], grey)


def test_png_with_alpha_keeps_its_colours(tmp_path):
    rgba = np.random.default_rng(5).integers(0, 256, (5, 6, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    rgb, conversion = read_rgb(str(tmp_path / "a.png"))
    assert conversion == "alpha"
    np.testing.assert_array_equal(rgb, rgba[:, :, :3])


def test_palette_png_with_transparency_is_read(tmp_path):
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    image.save(tmp_path / "p.png", transparency=0)
    rgb, conversion = read_rgb(str(tmp_path / "p.png"))
    assert conversion == "alpha" and (rgb == [200, 100, 50]).all()


def test_cmyk_jpeg_is_converted(tmp_path):
    cmyk = np.zeros((8, 8, 4), dtype=np.uint8)
    cmyk[:4] = (0, 255, 255, 0)  # red
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.jpg", quality=100)
    rgb, conversion = read_rgb(str(tmp_path / "c.jpg"))
    assert conversion == "cmyk"
    assert np.abs(rgb[:4].astype(int) - (255, 0, 0)).max() <= 3
    assert np.abs(rgb[4:].astype(int) - 255).max() <= 3


def test_truncated_jpeg_is_named(tmp_path):
    path = tmp_path / "t.jpg"
    Image.fromarray(np.random.default_rng(6).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(XDimError, match=r"t\.jpg: truncated image file .*download it again"):
        read_rgb(str(path))


def test_not_an_image_and_16_bit_images_are_named(tmp_path):
    (tmp_path / "x.jpg").write_text("not an image")
    with pytest.raises(XDimError, match=r"x\.jpg: not an image file Pillow can read"):
        read_rgb(str(tmp_path / "x.jpg"))
    Image.fromarray(np.full((4, 4), 40000, dtype=np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(XDimError, match=r"deep\.png: I;16 image .*8-bit"):
        read_rgb(str(tmp_path / "deep.png"))


# ---------------------------------------------------------------- the layout


@pytest.mark.parametrize("ids_per_caption", [False, True])
def test_open_split_with_ids_per_image_or_per_caption(tmp_path, ids_per_caption):
    data_path, data_name, _ = write_layout(str(tmp_path), ids_per_caption=ids_per_caption)
    split = open_image_split(data_path, data_name, "test")
    assert (split.n_images, split.n_captions, split.captions_per_image) == (4, 20, 5)
    assert split.image_ids == ["100", "101", "102", "103"]
    assert split.image_paths[2] == os.path.join(data_path, "flickr30k-images", "sub", "2.png")
    assert split.captions_path == os.path.join(data_path, "precomp", "test_caps.txt")


def test_coco_names_use_the_images_folder_and_image_root_overrides(tmp_path):
    data_path, _, _ = write_layout(str(tmp_path), coco=True)
    assert open_image_split(data_path, "coco", "test").image_paths[0].startswith(os.path.join(data_path, "images"))
    with pytest.raises(XDimError, match="flickr30k-images: image folder not found"):
        open_image_split(data_path, "f30k", "test")
    elsewhere = os.path.join(data_path, "images")
    split = open_image_split(data_path, "f30k", "test", image_root=elsewhere)
    assert split.image_paths[0] == os.path.join(elsewhere, "sub", "0.png")


def test_dev_keeps_its_first_5000_captions(tmp_path):
    data_path, data_name, _ = write_layout(str(tmp_path), n_images=1)
    folder = os.path.join(data_path, "flickr30k-images")
    mapping = {str(i): f"{i}.jpg" for i in range(1002)}
    for i in range(1002):
        open(os.path.join(folder, f"{i}.jpg"), "w").close()
    with open(os.path.join(data_path, "id_mapping.json"), "w") as f:
        json.dump(mapping, f)
    with open(os.path.join(data_path, "precomp", "dev_ids.txt"), "w") as f:
        f.write("\n".join(mapping) + "\n")
    with open(os.path.join(data_path, "precomp", "dev_caps.txt"), "w") as f:
        f.write("\n".join(["a dog"] * 5010) + "\n")
    split = open_image_split(data_path, data_name, "dev")
    assert (split.n_images, split.n_captions) == (1000, 5000)


def edit(path, text):
    with open(path, "w") as f:
        f.write(text)


BAD_LAYOUTS = [  # (file under data_path, its new text or None to remove it, split opened, message)
    ("precomp/test_caps.txt", None, "test", r"test_caps\.txt: file not found \(the raw-image layout needs"),
    ("precomp/test_ids.txt", "100\n101\n102\n", "test",
     r"test_ids\.txt: 3 image ids for 20 captions in test_caps\.txt"),
    ("precomp/test_ids.txt", "100\n101\n102\n999\n", "test",
     r"test_ids\.txt: image id 999 is not in id_mapping\.json \(1 of 4"),
    ("precomp/test_ids.txt", "100\n101\n\n103\n", "test", r"test_ids\.txt: line 3 is empty"),
    ("flickr30k-images/sub/1.png", None, "test", r"sub/1\.png: image file not found \(1 of the 4 images of test"),
    ("id_mapping.json", "{'100': 1}", "test", r"id_mapping\.json: not a JSON file"),
    ("id_mapping.json", '{"100": 1}', "test", r"id_mapping\.json: expected a JSON object"),
]


@pytest.mark.parametrize("name, text, split, message", BAD_LAYOUTS)
def test_bad_layouts_are_one_line_each(tmp_path, name, text, split, message):
    data_path, data_name, _ = write_layout(str(tmp_path))
    path = os.path.join(data_path, name)
    if text is None:
        os.remove(path)
    else:
        edit(path, text)
    hint = f"; python check_data.py --data_path {data_path} --data_name f30k checks every split"
    with pytest.raises(XDimError, match=message) as caught:
        open_image_split(data_path, data_name, split)
    assert str(caught.value).endswith(hint) and "\n" not in str(caught.value)


def test_ids_with_leading_zeros_match_the_mapping(tmp_path):
    data_path, data_name, _ = write_layout(str(tmp_path))
    edit(os.path.join(data_path, "precomp", "test_ids.txt"), "0100\n101\n102\n103\n")
    assert open_image_split(data_path, data_name, "test").image_ids[0] == "100"


# ---------------------------------------------------------------- loaders


def test_train_loader_batches(demo_images, encoder):
    split = open_image_split(*demo_images, "train")
    loader = image_train_loader(split, encoder, 8, PixelConfig(32, "detector"), seed=3)
    set_loader_epoch(loader, 0)
    batches = list(loader)
    assert len(batches) == 60 // 8
    pixels, lengths, captions, caption_lengths, caption_indices, image_indices = batches[0]
    assert pixels.shape == (8, 3, 32, 32) and pixels.dtype == torch.float32 and lengths is None
    assert captions.shape[0] == 8 and captions.dtype == torch.long and caption_lengths.shape == (8,)
    assert (image_indices == caption_indices // 5).all()
    assert len(set(torch.cat([batch[4] for batch in batches]).tolist())) == 56


def test_train_loader_is_a_function_of_seed_and_epoch(demo_images, encoder):
    split = open_image_split(*demo_images, "train")
    config = PixelConfig(32, "imagenet")

    def first_batch(seed, epoch, workers=0):
        loader = image_train_loader(split, encoder, 4, config, workers=workers, seed=seed)
        set_loader_epoch(loader, epoch)
        return next(iter(loader))

    a, b = first_batch(1, 2), first_batch(1, 2, workers=1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) and torch.equal(a[4], b[4])
    c = first_batch(1, 3)
    assert not torch.equal(a[4], c[4])


def test_train_pixels_depend_on_the_item_draws(demo_images, encoder):
    split = open_image_split(*demo_images, "train")
    dataset = images.ImageCaptionDataset(split, encoder, PixelConfig(32, "imagenet"), train=True, seed=0)
    first, again = dataset[7][0], dataset[7][0]
    assert torch.equal(first, again)
    dataset.set_epoch(1)
    assert not torch.equal(first, dataset[7][0])


def test_eval_batches_decode_each_image_once_in_order(demo_images, monkeypatch):
    split = open_image_split(*demo_images, "test")
    decoded = []
    real = images.read_rgb

    def counting(path):
        decoded.append(path)
        return real(path)

    monkeypatch.setattr(images, "read_rgb", counting)
    batches = list(image_eval_batches(split, PixelConfig(32, "detector"), 4))
    assert sorted(decoded) == sorted(split.image_paths) and len(decoded) == split.n_images == 6
    assert torch.cat([indices for _, indices in batches]).tolist() == list(range(6))
    pixels = torch.cat([p for p, _ in batches])
    rgb, _ = real(split.image_paths[5])
    assert torch.equal(pixels[5], pixel_tensor(rgb, PixelConfig(32, "detector")))
    share = list(image_eval_batches(split, PixelConfig(32, "detector"), 4, rows=[4, 1]))
    assert share[0][1].tolist() == [4, 1] and torch.equal(share[0][0][1], pixels[1])


def test_train_loader_ranks_read_disjoint_shares(demo_images, encoder):
    split = open_image_split(*demo_images, "train")
    shares = []
    for rank in range(2):
        loader = image_train_loader(split, encoder, 5, PixelConfig(32), seed=1, num_replicas=2, rank=rank)
        set_loader_epoch(loader, 4)
        shares.append(set(torch.cat([batch[4] for batch in loader]).tolist()))
    assert len(shares[0]) == len(shares[1]) == 30 and not shares[0] & shares[1]


@pytest.mark.parametrize("workers", [0, 1])
def test_a_bad_file_met_by_a_loader_worker_is_one_line(tmp_path, encoder, workers):
    data_path, data_name, _ = write_demo_images(str(tmp_path), {"train": 4, "test": 4}, size=32, with_bert=False)
    broken = os.path.join(data_path, "flickr30k-images", "5.jpg")  # test's second image
    with open(broken, "wb") as f:
        f.write(b"not a jpeg")
    expected = f"{broken}: not an image file Pillow can read"
    with pytest.raises(XDimError) as caught:
        list(image_eval_batches(open_image_split(data_path, data_name, "test"), PixelConfig(32), 2, workers))
    assert str(caught.value) == expected
    os.replace(broken, os.path.join(data_path, "flickr30k-images", "1.jpg"))
    loader = image_train_loader(open_image_split(data_path, data_name, "train"), encoder, 2, PixelConfig(32),
                                workers=workers)
    set_loader_epoch(loader, 0)
    with pytest.raises(XDimError) as caught:
        list(loader)
    assert str(caught.value) == expected.replace("5.jpg", "1.jpg")
