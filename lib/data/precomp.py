"""Precomputed region features and captions: the "precomp" layout (docs/data.md).

`{data_path}/{data_name}/{split}_ims.npy` holds float region features
(n_images, R, img_dim) and is memory-mapped, never read whole (COCO train is
33 GB); `{split}_caps.txt` holds one UTF-8 caption per line, 5 (or 1) per image.

Typical use:

    files = open_split(data_path, data_name, "test", img_dim=2048)
    caption_tokenizer = CaptionTokenizer(load_tokenizer(bert_path), bert_max_positions(bert_path))
    loader = train_loader(open_split(data_path, data_name, "train", 2048), caption_tokenizer, 128)  # training
    for epoch in ...: set_loader_epoch(loader, epoch); for batch in loader: ...

Training-time randomness (region dropping, word perturbation) comes from a
generator seeded with (seed, epoch, caption index), so it does not depend on the
number of workers, on the batch order or on where a run was resumed.
"""
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from lib.data.butd import check_split_complete
from lib.errors import XDimError, first_line

LOGGER_NAME = "lib.data"
logger = logging.getLogger(LOGGER_NAME)

DEV_CAPTION_LIMIT = 5000
REGION_KEEP_PROB = 0.8
WORD_PERTURB_PROB = 0.2
# Shares of the perturbed words; the remaining 0.4 are deleted.
MASK_SHARE = 0.5
RANDOM_SHARE = 0.1


# ---------------------------------------------------------------- tokenizer

class CaptionTokenizer:
    """Caption text -> BERT token ids `[CLS] ... [SEP]` (docs/data.md, "Caption processing").

    Words follow BERT's basic tokenizer (lower-casing, punctuation split) and
    each word becomes its WordPiece sub-tokens, so without perturbation the ids
    equal `tokenizer(caption)["input_ids"]`. Captions longer than `max_len`
    (the BERT's position limit) are cut to `max_len` ids with `[SEP]` last.
    """

    def __init__(self, tokenizer, max_len):
        if max_len < 2:
            raise ValueError(f"max_len must leave room for [CLS] and [SEP], got {max_len}")
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.cls_id = tokenizer.cls_token_id
        self.sep_id = tokenizer.sep_token_id
        self.mask_id = tokenizer.mask_token_id
        self.vocab_size = len(tokenizer)
        self._truncation_logged = False

    def word_pieces(self, caption):
        """Sub-token ids of each word: list (words) of lists of ids."""
        encoding = self.tokenizer.backend_tokenizer.encode(caption, add_special_tokens=False)
        words, previous = [], object()
        for token_id, word_id in zip(encoding.ids, encoding.word_ids):
            if word_id is None or word_id != previous:
                words.append([])
            words[-1].append(token_id)
            previous = word_id
        return words

    def perturb(self, words, rng):
        """Training-time word perturbation of `word_pieces` output, drawn from `rng`.

        Each word, with probability 0.2: half the time all its sub-tokens become
        [MASK], a tenth of the time each sub-token becomes its own uniformly drawn
        vocabulary id (any id, as in the official code), otherwise it is deleted.
        """
        kept = []
        for pieces in words:
            if rng.random() >= WORD_PERTURB_PROB:
                kept.append(pieces)
                continue
            choice = rng.random()
            if choice < MASK_SHARE:
                kept.append([self.mask_id] * len(pieces))
            elif choice < MASK_SHARE + RANDOM_SHARE:
                kept.append(rng.integers(0, self.vocab_size, size=len(pieces)).tolist())
        return kept

    def encode(self, caption, rng=None):
        """Token ids (list of int) of one caption; perturbed only when `rng` (np.random.Generator) is given."""
        words = self.word_pieces(caption)
        if rng is not None:
            words = self.perturb(words, rng)
        ids = [self.cls_id] + [token for pieces in words for token in pieces] + [self.sep_id]
        if len(ids) > self.max_len:
            ids = ids[:self.max_len - 1] + [self.sep_id]
            if not self._truncation_logged:
                self._truncation_logged = True
                logger.warning("caption truncated to the BERT's %d positions (further truncations "
                               "are not reported): %.80s", self.max_len, caption)
        return ids

    def check_captions(self, split_files):
        """XDimError naming the first caption of `split_files` that tokenizes to nothing.

        Such a caption (e.g. only a zero-width space or a lone combining accent) would
        silently become `[CLS] [SEP]`. BERT's normalizer drops control, invisible and
        (uncased) combining characters; whatever else is left, other than spaces, yields
        at least one token. Captions are numbered like the lines of the caption file.
        """
        normalize = self.tokenizer.backend_tokenizer.normalizer.normalize_str
        for index, caption in enumerate(split_files.captions):
            if not normalize(caption).strip():
                raise XDimError(f"{split_files.captions_path}: line {index + 1} is empty once tokenized "
                                "(only spaces, invisible or combining characters)")
        self.warn_unknown_tokens(split_files)

    def warn_unknown_tokens(self, split_files):
        """Warn once when captions of `split_files` hold words the vocabulary lacks (emoji, ...).

        Such a word silently becomes [UNK]; the warning gives how many captions have one and
        the line of the first. Returns that number of captions. BERT tokenizes each
        space-separated word on its own, so only the split's distinct words are tokenized
        (COCO's 566k training captions hold about 40k).
        """
        captions = split_files.captions
        words = sorted({word for caption in captions for word in caption.split()})
        encodings = self.tokenizer.backend_tokenizer.encode_batch(words, add_special_tokens=False)
        unknown = {word for word, encoding in zip(words, encodings) if self.tokenizer.unk_token_id in encoding.ids}
        lines = [number for number, caption in enumerate(captions, start=1)
                 if unknown and not unknown.isdisjoint(caption.split())]
        if lines:
            logger.warning("warning: %s: %d of %d captions hold characters outside the BERT vocabulary, "
                           "read as [UNK] (first at line %d: %.60s)", split_files.captions_path, len(lines),
                           len(captions), lines[0], captions[lines[0] - 1])
        return len(lines)


# ---------------------------------------------------------------- split files

@dataclass
class SplitFiles:
    """One split on disk: memory-mapped features and the caption list.

    images: np.memmap (n_images, R, img_dim) float; captions: list[str] with
    captions `c * captions_per_image ... + captions_per_image - 1` describing image c.
    """
    images: np.ndarray
    captions: list
    captions_per_image: int
    images_path: str
    captions_path: str

    @property
    def n_images(self):
        return self.images.shape[0]

    @property
    def n_captions(self):
        return len(self.captions)


NPY_MAGIC = b"\x93NUMPY"


def load_region_features(path, img_dim=None):
    """`path` (a {split}_ims.npy) memory-mapped, checked: (n_images, R, img_dim) float, n and R > 0.

    Any R >= 1 is accepted. float16 and float32 are read exactly; wider floats (float64)
    are rounded to float32 when read, with a warning. XDimError for the features of a
    conversion whose files were being renamed into place when it stopped (butd).
    """
    check_split_complete(path)
    try:
        with open(path, "rb") as f:
            is_npy = f.read(len(NPY_MAGIC)) == NPY_MAGIC
        if not is_npy:
            raise XDimError(f"{path}: is not a .npy file (no numpy header; a text or other file?); "
                            f"give a {{split}}_ims.npy of region features")
        images = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise XDimError(f"{path}: not a readable .npy array ({first_line(error)})") from None
    if not isinstance(images, np.ndarray) or images.ndim != 3 or images.dtype.kind != "f":
        shape, dtype = getattr(images, "shape", "?"), getattr(images, "dtype", type(images).__name__)
        raise XDimError(f"{path}: expected a 3-D float array (images, regions, features), "
                        f"got shape {shape} dtype {dtype}")
    if images.shape[0] == 0 or images.shape[1] == 0:
        raise XDimError(f"{path}: holds no region features (shape {images.shape})")
    if img_dim is not None and images.shape[2] != img_dim:
        raise XDimError(f"{path}: region features have size {images.shape[2]}, "
                        f"expected {img_dim} (--img_dim)")
    if images.dtype.itemsize > 4:
        logger.warning("warning: %s: %s features are rounded to float32 when read (float32 or float16 "
                       "files hold the same and take less disk)", path, images.dtype)
    return images


def read_captions(path):
    """The captions of a caption file, one per line (XDimError for a blank or undecodable line).

    One blank line at the very end (an editor's extra newline) is ignored; blank lines
    elsewhere are errors. Lines and bytes within a line are counted from 1.
    """
    return list(iter_captions(path))


def split_file(path, suffix):
    """The file of the same split beside `path`: 'x/test_ims.npy' or 'x/test_caps.txt' -> 'x/test' + suffix
    (e.g. '_ids.txt', '_boxes.npy', '_image_info.npy'), whether it exists or not; None for another name."""
    for ending in ("_ims.npy", "_caps.txt"):
        if path.endswith(ending):
            return path[:-len(ending)] + suffix
    return None


def iter_captions(path):
    """read_captions' captions one at a time, reading the file line by line (same rules, same errors)."""
    with open(path, "rb") as f:
        previous = None
        for number, line in enumerate(f, start=1):
            if previous is not None:
                yield caption_text(path, number - 1, previous)
            previous = line[:-1] if line.endswith(b"\n") else line
        if previous is not None and (number == 1 or previous.strip()):
            yield caption_text(path, number, previous)


def caption_text(path, number, line):
    """Line `number` (bytes, no newline) of caption file `path` decoded and stripped; XDimError if
    it is not UTF-8 or blank. A byte-order mark is dropped from line 1."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        raise XDimError(f"{path}: line {number} is not valid UTF-8 "
                        f"(byte {error.start + 1} of the line)") from None
    text = text.lstrip("\ufeff").strip() if number == 1 else text.strip()
    if not text:
        raise XDimError(f"{path}: line {number} is empty")
    return text


def captions_per_image(n_captions, n_images, captions_path, images_path):
    """5 or 1: how many captions each image has; XDimError naming both files for any other count."""
    if n_captions == 5 * n_images:
        return 5
    if n_captions == n_images:
        return 1
    raise XDimError(f"{captions_path}: {n_captions} captions for {n_images} images in "
                    f"{os.path.basename(images_path)} (need 5 per image or 1 per image)")


def check_data_hint(folder):
    """What errors about a split's files end with: the check_data.py command for `folder`."""
    data_path, data_name = os.path.split(os.path.normpath(folder))
    return f"python check_data.py --data_path {data_path or '.'} --data_name {data_name} checks every split"


def open_split(data_path, data_name, split, img_dim=None):
    """Open `{data_path}/{data_name}/{split}_{ims.npy,caps.txt}` as a SplitFiles.

    Detects 5 or 1 captions per image. `dev` keeps only its first 5000 captions
    (and their images), the validation set used during training. With `img_dim`,
    checks the feature size. Raises XDimError on any problem with the files, ending
    with check_data_hint's command.
    """
    try:
        return _read_split(data_path, data_name, split, img_dim)
    except XDimError as error:
        raise XDimError(f"{error}; {check_data_hint(os.path.join(data_path, data_name))}") from None


def _read_split(data_path, data_name, split, img_dim):
    """open_split without the hint."""
    folder = os.path.join(data_path, data_name)
    if not os.path.isdir(folder):
        raise XDimError(f"{folder}: data folder not found (expected --data_path/--data_name "
                        f"holding {split}_ims.npy and {split}_caps.txt)")
    images_path = os.path.join(folder, f"{split}_ims.npy")
    captions_path = os.path.join(folder, f"{split}_caps.txt")
    for path in (images_path, captions_path):
        if not os.path.isfile(path):
            raise XDimError(f"{path}: split file not found")
    images = load_region_features(images_path, img_dim)
    captions = read_captions(captions_path)
    per_image = captions_per_image(len(captions), images.shape[0], captions_path, images_path)
    if split == "dev" and len(captions) > DEV_CAPTION_LIMIT:
        captions = captions[:DEV_CAPTION_LIMIT]
        images = images[:DEV_CAPTION_LIMIT // per_image]
    return SplitFiles(images, captions, per_image, images_path, captions_path)


# ---------------------------------------------------------------- datasets

def item_rng(seed, epoch, index):
    """The generator of one training item: a function of (seed, epoch, index) only (non-negative ints)."""
    return np.random.default_rng([seed, epoch, index])


def drop_regions(image, rng, keep_prob=REGION_KEEP_PROB):
    """Keep each region (row of `image`, (R, img_dim)) with probability `keep_prob`, in order.

    At least one region is kept: if every draw fails, the region with the lowest draw stays.
    Returns (R', img_dim).
    """
    draws = rng.random(image.shape[0])
    keep = draws < keep_prob
    if not keep.any():
        keep[np.argmin(draws)] = True
    return image[keep]


def first_non_finite(images):
    """Row of the first image of `images` (B, R, img_dim) holding NaN or inf, or None.

    A finite sum proves every element finite in one cheap pass (about 1 ms for a
    128-image batch of 36 x 2048 features); only otherwise are the images searched.
    """
    if bool(torch.isfinite(images.sum())):
        return None
    bad = (~torch.isfinite(images).flatten(1).all(1)).nonzero()
    return int(bad[0]) if len(bad) else None  # None: finite values whose sum overflowed


def check_finite_images(images, image_indices, path):
    """XDimError naming `path` and the first image of a batch with NaN or infinite features.

    images (B, R, img_dim); image_indices (B,): each row's image (row of the file).
    """
    row = first_non_finite(images)
    if row is not None:
        raise XDimError(f"{non_finite_problem(path, int(image_indices[row]))}; "
                        f"{check_data_hint(os.path.dirname(path))}")


def non_finite_problem(path, image_index):
    """The message about image `image_index` of features file `path` holding NaN or inf."""
    return f"{path}: image {image_index} holds NaN or infinite region features"


def check_split_finite(split_files, chunk=256):
    """Read a whole split's features once and check them (a few seconds per GB from disk)."""
    check_features_finite(split_files.images, split_files.images_path, chunk)


def check_features_finite(images, path, chunk=256):
    """XDimError naming `path` and the first image of `images` (n, R, img_dim), e.g. a memory map of
    the file, that holds NaN or inf; the features are read once, `chunk` images at a time."""
    for start in range(0, len(images), chunk):
        block = torch.from_numpy(np.array(images[start:start + chunk], dtype=np.float32))
        check_finite_images(block, range(start, start + len(block)), path)


def _image(split_files, image_index):
    """One image's regions as a float32 array (R, img_dim), copied out of the memory map."""
    return np.array(split_files.images[image_index], dtype=np.float32)


class PrecompDataset(Dataset):
    """One item per caption: (image (R', img_dim) float32, token_ids (L,) long, caption_index, image_index).

    With train=True, regions are dropped (keep p=0.8) and words perturbed, from
    `item_rng(seed, epoch, caption_index)`; call `set_epoch` before each epoch.
    """

    def __init__(self, split_files, caption_tokenizer, train, seed=0):
        self.files = split_files
        self.encoder = caption_tokenizer
        self.train = train
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.files.n_captions

    def __getitem__(self, index):
        image_index = index // self.files.captions_per_image
        caption = self.files.captions[index]
        if self.train:
            rng = item_rng(self.seed, self.epoch, index)
            image = self.image(image_index, rng)
            ids = self.encoder.encode(caption, rng)
        else:
            image = self.image(image_index, None)
            ids = self.encoder.encode(caption)
        return image, torch.tensor(ids, dtype=torch.long), index, image_index

    def image(self, image_index, rng):
        """Image `image_index` as a tensor, its regions dropped with `rng` (None: all kept).

        Subclasses reading other image inputs override this; its draws come before the caption's.
        """
        regions = _image(self.files, image_index)
        return torch.from_numpy(regions if rng is None else drop_regions(regions, rng))


class ImageDataset(Dataset):
    """One item per image, all regions: (image (R, img_dim) float32, image_index)."""

    def __init__(self, split_files):
        self.files = split_files

    def __len__(self):
        return self.files.n_images

    def __getitem__(self, index):
        return torch.from_numpy(_image(self.files, index)), index


class CaptionDataset(Dataset):
    """One item per caption, never perturbed: (token_ids (L,) long, caption_index)."""

    def __init__(self, split_files, caption_tokenizer):
        self.files = split_files
        self.encoder = caption_tokenizer

    def __len__(self):
        return self.files.n_captions

    def __getitem__(self, index):
        return torch.tensor(self.encoder.encode(self.files.captions[index]), dtype=torch.long), index


def pad_images(images):
    """List of (R_i, img_dim) tensors -> (B, max R_i, img_dim) zero-padded, lengths (B,) long."""
    lengths = torch.tensor([image.shape[0] for image in images], dtype=torch.long)
    padded = images[0].new_zeros(len(images), int(lengths.max()), images[0].shape[1])
    for row, image in enumerate(images):
        padded[row, :image.shape[0]] = image
    return padded, lengths


def pad_tokens(token_ids):
    """List of (L_i,) long tensors -> (B, max L_i) padded with id 0, lengths (B,) long."""
    lengths = torch.tensor([ids.shape[0] for ids in token_ids], dtype=torch.long)
    padded = torch.zeros(len(token_ids), int(lengths.max()), dtype=torch.long)
    for row, ids in enumerate(token_ids):
        padded[row, :ids.shape[0]] = ids
    return padded, lengths


def collate_pairs(batch):
    """PrecompDataset items -> (images (B, Rmax, img_dim), image_lengths (B,), captions (B, Lmax),
    lengths (B,), caption_indices (B,), image_indices (B,)); zero padding, batch order kept."""
    images, token_ids, caption_indices, image_indices = zip(*batch)
    return pair_batch(*pad_images(images), token_ids, caption_indices, image_indices)


def pair_batch(images, image_lengths, token_ids, caption_indices, image_indices):
    """A training batch tuple from its batched images (and their lengths, or None) and the items'
    token ids (list of (L_i,) long) and indices: what every training loader yields."""
    captions, lengths = pad_tokens(token_ids)
    return (images, image_lengths, captions, lengths,
            torch.tensor(caption_indices, dtype=torch.long), torch.tensor(image_indices, dtype=torch.long))


def collate_captions(batch):
    """CaptionDataset items -> (captions (B, Lmax) long, lengths (B,), caption_indices (B,))."""
    token_ids, indices = zip(*batch)
    captions, lengths = pad_tokens(token_ids)
    return captions, lengths, torch.tensor(indices, dtype=torch.long)


# ---------------------------------------------------------------- loaders

class EpochShuffleSampler(Sampler):
    """A permutation of range(n) that depends only on (seed, epoch), like DistributedSampler."""

    def __init__(self, n, seed=0):
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.n

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())


def train_loader(files, caption_tokenizer, batch_size, workers=0, seed=0, augment=True, num_replicas=1, rank=0):
    """Shuffled training batches of `collate_pairs` tuples over one split (`open_split`).

    Every caption is checked to tokenize to something first. `augment=False` turns
    region dropping and word perturbation off. With `num_replicas` > 1 this process
    (`rank`) reads its share of every epoch's shuffle (DistributedSampler); otherwise
    the shuffle is an EpochShuffleSampler. Both depend only on (seed, epoch). The last
    incomplete batch is dropped. Workers are not persistent, so
    `set_loader_epoch(loader, epoch)` reaches them.
    """
    caption_tokenizer.check_captions(files)
    dataset = PrecompDataset(files, caption_tokenizer, train=augment, seed=seed)
    return shuffled_loader(dataset, collate_pairs, batch_size, workers, seed, num_replicas, rank)


def shuffled_loader(dataset, collate_fn, batch_size, workers=0, seed=0, num_replicas=1, rank=0,
                    loader_class=DataLoader):
    """train_loader's DataLoader over any per-caption `dataset` with a `set_epoch` method: the
    (seed, epoch) shuffle, this rank's share of it, the last incomplete batch dropped.
    `loader_class`: DataLoader or a subclass of it."""
    if num_replicas > 1:
        sampler = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=True,
                                     seed=seed, drop_last=True)
    else:
        sampler = EpochShuffleSampler(len(dataset), seed)
    return loader_class(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                        collate_fn=collate_fn, drop_last=True)


def set_loader_epoch(loader, epoch):
    """Select `epoch`'s shuffle and per-item randomness for a `train_loader` (call before iterating)."""
    loader.dataset.set_epoch(epoch)
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
