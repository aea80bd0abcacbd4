"""Raw images and captions: the official layout of the backbone (grid-feature) mode (docs/data.md).

`data_path` is the dataset folder itself:

    data_path/precomp/{split}_caps.txt   captions, 5 (or 1) per image, as in the precomp layout
    data_path/precomp/{split}_ids.txt    one image id per line: per image, or per caption (repeated)
    data_path/id_mapping.json            {"<image id>": "<file path relative to the image folder>"}
    data_path/images/ (COCO: a data name containing "coco") or data_path/flickr30k-images/

Typical use:

    split = open_image_split(data_path, "f30k", "train")
    pixels = PixelConfig.for_backbone("detector", input_scale_factor=2.0)   # T = 512
    loader = image_train_loader(split, encoder, 128, pixels, workers=8)     # batches as precomp.train_loader
    for images, indices in image_eval_batches(open_image_split(...), pixels, 64): ...

Pixels: decoded with Pillow to RGB uint8; in training a random crop (one ratio r ~ U(0.6, 1)
for both sides, any integer offset), a resize to T x T (bilinear, half-pixel centres, no
antialiasing: OpenCV's INTER_LINEAR on float32) and a horizontal flip with p = 0.5, all drawn
from precomp.item_rng(seed, epoch, caption index) before the caption's own perturbation; at
evaluation the whole image resized. Then normalised for the backbone's weights.
"""
import json
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

from lib.data import precomp
from lib.errors import XDimError, first_line

BASE_SIZE = 256
CROP_RATIO_RANGE = (0.6, 1.0)
FLIP_PROB = 0.5
# The BUTD detector's (Caffe) input: BGR, minus these means, no scaling.
DETECTOR_MEANS_BGR = (102.9801, 115.9465, 122.7717)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = ("detector", "imagenet")
COCO_IMAGE_FOLDER, OTHER_IMAGE_FOLDER = "images", "flickr30k-images"
MAPPING_FILE, CAPTIONS_FOLDER = "id_mapping.json", "precomp"
# Pillow modes converted to RGB, and what the conversion changes (None: nothing lost).
CONVERSIONS = {"RGB": None, "L": "grey", "1": "grey", "P": None, "YCbCr": None,
               "RGBA": "alpha", "RGBa": "alpha", "LA": "alpha", "La": "alpha", "PA": "alpha", "CMYK": "cmyk"}


# ---------------------------------------------------------------- the split on disk

@dataclass
class ImageSplit:
    """One split of the official layout: captions and the image file of each image.

    captions: list[str], captions `c * captions_per_image ...` describing image c;
    image_ids / image_paths: list[str], one per image, in caption order.
    Duck-compatible with precomp.SplitFiles where captions are concerned.
    """
    captions: list
    captions_per_image: int
    image_ids: list
    image_paths: list
    captions_path: str
    ids_path: str

    @property
    def n_images(self):
        return len(self.image_paths)

    @property
    def n_captions(self):
        return len(self.captions)


def image_folder(data_path, data_name, image_root=None):
    """The folder the mapping's paths are relative to: `image_root`, else `data_path/images` when
    `data_name` contains 'coco', else `data_path/flickr30k-images` (the official code's rule)."""
    if image_root:
        return image_root
    return os.path.join(data_path, COCO_IMAGE_FOLDER if "coco" in data_name.lower() else OTHER_IMAGE_FOLDER)


def check_images_hint(data_path, data_name, image_root=None):
    """What errors about an image split end with: the check_data.py command for the dataset."""
    root = f" --image_root {image_root}" if image_root else ""
    return f"python check_data.py --data_path {data_path} --data_name {data_name}{root} checks every split"


def open_image_split(data_path, data_name, split, image_root=None):
    """Open split `split` of the official layout under `data_path` as an ImageSplit.

    Detects 5 or 1 captions per image and ids given per image or per caption. `dev` keeps
    its first 5000 captions (and their images). Every id must be in the mapping and every
    image file present (each folder is listed once); decoding happens later. XDimError on
    any problem, ending with the check_data.py command.
    """
    keep = precomp.DEV_CAPTION_LIMIT if split == "dev" else None
    try:
        return read_image_split(data_path, data_name, split, image_root, keep)
    except XDimError as error:
        raise XDimError(f"{error}; {check_images_hint(data_path, data_name, image_root)}") from None


def read_image_split(data_path, data_name, split, image_root=None, keep_captions=None):
    """open_image_split without the hint; `keep_captions` (None: all) keeps that many first captions."""
    if not os.path.isdir(data_path):
        raise XDimError(f"{data_path}: dataset folder not found (--data_path is the folder holding "
                        f"{CAPTIONS_FOLDER}/, {MAPPING_FILE} and the image folder)")
    captions_path, ids_path = split_paths(data_path, split)
    for path in (captions_path, ids_path, os.path.join(data_path, MAPPING_FILE)):
        if not os.path.isfile(path):
            raise XDimError(f"{path}: file not found (the raw-image layout needs {CAPTIONS_FOLDER}/{split}_caps.txt, "
                            f"{CAPTIONS_FOLDER}/{split}_ids.txt and {MAPPING_FILE}; docs/data.md)")
    folder = image_folder(data_path, data_name, image_root)
    if not os.path.isdir(folder):
        raise XDimError(f"{folder}: image folder not found (images go in {OTHER_IMAGE_FOLDER}/ or, for a "
                        f"--data_name containing coco, {COCO_IMAGE_FOLDER}/ under --data_path; "
                        "--image_root names another folder)")
    captions = precomp.read_captions(captions_path)
    image_ids, per_image = images_of_ids(read_ids(ids_path), len(captions), ids_path, captions_path)
    if keep_captions is not None and len(captions) > keep_captions:
        captions = captions[:keep_captions]
        image_ids = image_ids[:keep_captions // per_image]
    mapping = read_mapping(os.path.join(data_path, MAPPING_FILE))
    paths = mapped_paths(image_ids, mapping, folder, ids_path)
    missing = missing_files(paths)
    if missing:
        raise XDimError(f"{missing[0]}: image file not found ({len(missing)} of the {len(paths)} images of "
                        f"{split} missing; is the image folder {folder} right?)")
    return ImageSplit(captions, per_image, image_ids, paths, captions_path, ids_path)


def split_paths(data_path, split):
    """(captions path, ids path) of `split` under `data_path`."""
    folder = os.path.join(data_path, CAPTIONS_FOLDER)
    return os.path.join(folder, f"{split}_caps.txt"), os.path.join(folder, f"{split}_ids.txt")


def read_ids(path):
    """The image ids of an ids file (list of str), one per line; an integer id is written as
    Python's str(int(...)) writes it (as the mapping's keys are), anything else as it stands."""
    return [normal_id(text) for text in precomp.iter_captions(path)]


def normal_id(text):
    """'0042' -> '42'; a non-integer id unchanged."""
    try:
        return str(int(text))
    except ValueError:
        return text


def images_of_ids(ids, n_captions, ids_path, captions_path):
    """(one id per image, captions per image) from the ids file's lines.

    One line per image with 5 captions each, one line per caption with each image's id
    repeated on its 5 consecutive lines, or one caption per image. XDimError otherwise.
    """
    if n_captions and n_captions == 5 * len(ids):
        return ids, 5
    if len(ids) == n_captions:
        if n_captions % 5 == 0 and all(ids[i] == ids[i - i % 5] for i in range(n_captions)):
            return ids[::5], 5
        return ids, 1
    raise XDimError(f"{ids_path}: {len(ids)} image ids for {n_captions} captions in "
                    f"{os.path.basename(captions_path)} (need one id per image with 5 captions each, "
                    "one id per caption, or one caption per image)")


def read_mapping(path):
    """The id -> relative path dictionary of an id_mapping.json file (XDimError if malformed)."""
    try:
        with open(path, encoding="utf-8") as f:
            mapping = json.load(f)
    except (ValueError, UnicodeDecodeError) as error:
        raise XDimError(f"{path}: not a JSON file ({first_line(error)})") from None
    if not isinstance(mapping, dict) or not all(isinstance(value, str) for value in mapping.values()):
        raise XDimError(f"{path}: expected a JSON object {{\"<image id>\": \"<path of the image file>\"}}")
    return {normal_id(key): value for key, value in mapping.items()}


def mapped_paths(image_ids, mapping, folder, ids_path):
    """The image file of each id (list of str under `folder`); XDimError naming the first unknown id."""
    unknown = [image_id for image_id in image_ids if image_id not in mapping]
    if unknown:
        raise XDimError(f"{ids_path}: image id {unknown[0]} is not in {MAPPING_FILE} ({len(unknown)} of "
                        f"{len(image_ids)} ids unknown; is it this dataset's mapping file?)")
    return [os.path.join(folder, mapping[image_id]) for image_id in image_ids]


def missing_files(paths):
    """The paths of `paths` that are no file, listing each folder once (fast for 100k files)."""
    listed, missing = {}, []
    for path in paths:
        folder, name = os.path.split(path)
        if folder not in listed:
            try:
                listed[folder] = {entry.name for entry in os.scandir(folder or ".") if entry.is_file()}
            except OSError:
                listed[folder] = set()
        if name not in listed[folder]:
            missing.append(path)
    return missing


# ---------------------------------------------------------------- decoding

def read_rgb(path):
    """Decode image file `path` -> ((H, W, 3) uint8 RGB array, conversion).

    conversion: None (RGB, palette or YCbCr: nothing lost), 'grey' (three equal channels),
    'alpha' (transparency dropped, the stored colours kept) or 'cmyk' (Pillow's plain formula,
    no colour profile). XDimError naming the file for a truncated, damaged or unknown file
    and for 16-bit or float images. The EXIF orientation is not applied (nor is it officially).
    """
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode not in CONVERSIONS:
                raise XDimError(f"{path}: {mode} image (16-bit, float or another colour space); "
                                "save it as 8-bit RGB or grey")
            if mode == "P" and "transparency" in image.info:
                mode, image = "PA", image.convert("RGBA")
            rgb = np.array(image if mode == "RGB" else image.convert("RGB"))
    except OSError as error:
        raise XDimError(f"{path}: {decode_problem(error)}") from None
    except (SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise XDimError(f"{path}: cannot be decoded ({first_line(error)})") from None
    return rgb, CONVERSIONS[mode]


def decode_problem(error):
    """The message part for a Pillow OSError while decoding."""
    text = first_line(error)
    if "truncated" in text or "broken data stream" in text:
        return f"truncated image file ({text}); copy or download it again"
    if "cannot identify image file" in text:
        return "not an image file Pillow can read"
    return f"cannot be read ({text})"


# ---------------------------------------------------------------- the pixel pipeline

@dataclass(frozen=True)
class PixelConfig:
    """How images become backbone input: `size` T (square T x T) and the normalisation,
    'detector' (BGR minus the BUTD means, no scaling) or 'imagenet' (RGB / 255, mean/std)."""
    size: int = BASE_SIZE
    normalization: str = "detector"

    def __post_init__(self):
        if self.normalization not in NORMALIZATIONS:
            raise XDimError(f"unknown image normalization {self.normalization!r} "
                            f"(choose from {', '.join(NORMALIZATIONS)})")
        if self.size < 1:
            raise XDimError(f"image size must be at least 1 pixel, got {self.size} (--input_scale_factor)")

    @classmethod
    def for_backbone(cls, backbone_source, input_scale_factor=1.0):
        """T = int(256 * input_scale_factor); 'detector' normalisation for the BUTD backbone, else ImageNet's."""
        return cls(int(BASE_SIZE * input_scale_factor), "detector" if backbone_source == "detector" else "imagenet")

    @classmethod
    def for_model(cls, model_config):
        """The settings of a raw-image model's backbone (its ModelConfig's source and scale factor)."""
        return cls.for_backbone(model_config.backbone_source, model_config.input_scale_factor)


def crop_window(height, width, rng):
    """(top, left, crop height, crop width) of a training crop of an image `height` x `width`.

    One ratio r ~ U(0.6, 1) for both sides (the crop is int(side * r), at least 1 pixel), each
    offset uniform over the valid ones, all drawn from `rng` (np.random.Generator).
    """
    low, high = CROP_RATIO_RANGE
    ratio = low + (high - low) * rng.random()
    crop_height, crop_width = max(1, int(height * ratio)), max(1, int(width * ratio))
    top = int(rng.integers(0, height - crop_height + 1))
    left = int(rng.integers(0, width - crop_width + 1))
    return top, left, crop_height, crop_width


def resize_linear(pixels, size):
    """(C, H, W) float32 -> (C, size, size): bilinear, half-pixel centres, edge pixels repeated,
    no antialiasing (what OpenCV's INTER_LINEAR computes on float32, to float32 rounding)."""
    return F.interpolate(pixels[None], size=(size, size), mode="bilinear", align_corners=False,
                         antialias=False)[0]


def normalize(pixels, normalization):
    """(3, T, T) float32 RGB in 0..255 -> the backbone's input (3, T, T) float32 (new tensor)."""
    if normalization == "detector":
        return pixels.flip(0) - torch.tensor(DETECTOR_MEANS_BGR, dtype=torch.float32)[:, None, None]
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
    return (pixels / 255 - mean) / std


def pixel_tensor(rgb, config, rng=None):
    """(H, W, 3) uint8 RGB -> (3, T, T) float32 backbone input.

    With `rng` (training): crop, resize, flip with p = 0.5, drawn in that order; without: the
    whole image resized.
    """
    if rng is not None:
        top, left, height, width = crop_window(rgb.shape[0], rgb.shape[1], rng)
        rgb = rgb[top:top + height, left:left + width]
    pixels = resize_linear(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float(), config.size)
    if rng is not None and rng.random() < FLIP_PROB:
        pixels = pixels.flip(2)
    return normalize(pixels, config.normalization)


# ---------------------------------------------------------------- datasets and loaders

class ImageCaptionDataset(precomp.PrecompDataset):
    """PrecompDataset whose images are pixels: item (pixels (3, T, T) float32, token_ids (L,) long,
    caption_index, image_index); in training the image's draws come from the caption's item_rng."""

    def __init__(self, split, caption_tokenizer, pixel_config, train, seed=0):
        super().__init__(split, caption_tokenizer, train, seed)
        self.pixel_config = pixel_config

    def image(self, image_index, rng):
        rgb, _ = read_rgb(self.files.image_paths[image_index])
        return pixel_tensor(rgb, self.pixel_config, rng)


def collate_pixel_pairs(batch):
    """ImageCaptionDataset items -> train_loader's tuple with pixels (B, 3, T, T) and None for lengths."""
    pixels, token_ids, caption_indices, image_indices = zip(*batch)
    return precomp.pair_batch(torch.stack(pixels), None, token_ids, caption_indices, image_indices)


class OneLineErrorLoader(DataLoader):
    """A DataLoader whose XDimErrors keep their one-line message when raised in a worker process.

    PyTorch re-raises a worker's exception in this process with the worker's traceback as its
    message; a bad image file would otherwise end a run with that traceback.
    """

    def __iter__(self):
        batches = super().__iter__()
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except XDimError as error:
                raise XDimError(worker_error_message(error)) from None
            yield batch


def worker_error_message(error):
    """The message an XDimError had before a DataLoader re-raised it from a worker: PyTorch's
    text 'Caught XDimError in DataLoader worker process N.\nOriginal Traceback ...' ends with the
    line '...XDimError: <message>'. Other messages are returned unchanged."""
    text = str(error)
    lines = text.strip().splitlines()
    if len(lines) > 1 and lines[0].startswith(f"Caught {type(error).__name__} in DataLoader worker"):
        return lines[-1].split(f"{type(error).__name__}: ", 1)[-1]
    return text


def image_train_loader(split, caption_tokenizer, batch_size, pixel_config, workers=0, seed=0, num_replicas=1,
                       rank=0):
    """Shuffled training batches over an ImageSplit: precomp.train_loader's tuple
    (pixels (B, 3, T, T) float32, None, captions (B, Lmax), lengths (B,), caption_indices (B,),
    image_indices (B,)), with its shuffle, rank sharing, dropped last batch and per-item seeding;
    call precomp.set_loader_epoch(loader, epoch) before each epoch.

    Each caption is one item, so an image is decoded once per caption, each time with its own crop.
    """
    caption_tokenizer.check_captions(split)
    dataset = ImageCaptionDataset(split, caption_tokenizer, pixel_config, train=True, seed=seed)
    return precomp.shuffled_loader(dataset, collate_pixel_pairs, batch_size, workers, seed, num_replicas, rank,
                                   OneLineErrorLoader)


class EvalImages(Dataset):
    """One item per image of an ImageSplit: (pixels (3, T, T) float32, image_index), no augmentation."""

    def __init__(self, split, pixel_config):
        self.split = split
        self.pixel_config = pixel_config

    def __len__(self):
        return self.split.n_images

    def __getitem__(self, index):
        rgb, _ = read_rgb(self.split.image_paths[index])
        return pixel_tensor(rgb, self.pixel_config), index


def image_eval_batches(split, pixel_config, batch_size, workers=0, rows=None):
    """Evaluation batches (pixels (b, 3, T, T) float32, image_indices (b,) int64), in order.

    Each image is decoded once. `rows` selects the images (e.g. a torchrun process's share);
    None takes all. Returns a DataLoader (iterable, with len); a file that cannot be decoded
    raises one-line XDimError naming it, also from a worker process.
    """
    images = EvalImages(split, pixel_config)
    if rows is not None:
        images = Subset(images, [int(row) for row in rows])
    return OneLineErrorLoader(images, batch_size=batch_size, shuffle=False, num_workers=workers)
