"""Small stand-ins for the real inputs: a tiny BERT and a synthetic dataset (region features or image files).

Used by the demo and by the tests, which must never touch the network.
"""
import json
import os

import numpy as np
from PIL import Image

from lib.model.bert import write_bert_folder

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_tiny_bert(folder, words, hidden_size=32, num_layers=2, num_heads=2,
                    intermediate_size=64, max_position_embeddings=64,
                    with_weights=True, seed=0):
    """Write a BERT folder (config.json, vocab.txt and, optionally, random weights).

    The vocabulary is BERT's special tokens followed by `words` (deduplicated,
    in order), so `[PAD]` has id 0 as in bert-base-uncased.
    Returns the folder path.
    """
    vocab = list(dict.fromkeys(SPECIAL_TOKENS + list(words)))
    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": len(vocab),
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "type_vocab_size": 2,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
    }
    write_bert_folder(folder, config, vocab)
    if with_weights:
        import torch
        from transformers import BertConfig, BertModel
        torch.manual_seed(seed)
        BertModel(BertConfig(**config)).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- demo dataset
#
# A learnable stand-in for BUTD features: each object word and colour word has a
# fixed random prototype vector; an image shows 2-4 objects, each painted onto a
# few regions as a noisy copy of its prototype (plus its colour's prototype), and
# the remaining regions are background clutter that no caption mentions.

DEMO_OBJECTS = [
    "dog", "cat", "horse", "cow", "sheep", "bird", "duck", "elephant", "bear", "zebra",
    "giraffe", "car", "truck", "bus", "bike", "boat", "train", "plane", "kite", "ball",
    "chair", "table", "bed", "lamp", "clock", "vase", "cup", "bottle", "bowl", "book",
    "phone", "laptop", "umbrella", "bag", "hat", "shoe", "pizza", "cake", "apple", "banana",
]
DEMO_COLOURS = ["red", "blue", "green", "yellow", "black", "white"]
DEMO_PREFIXES = ["", "a photo of ", "there is ", "a picture showing ", "an image with ",
                 "we can see ", "this is "]
DEMO_JOINERS = [" and ", " with ", " next to ", " near ", " beside "]
DEMO_SUFFIXES = ["", " in the scene", " here", " in this picture", " on the ground"]
DEMO_SPLITS = {"train": 2000, "dev": 200, "test": 200, "testall": 500}
DEMO_DATA_NAME = "demo_precomp"
DEMO_FOLDER = os.path.join("data", "demo")
DEMO_IMG_DIM = 64
# The demo's training options (train_demo.sh and ablate.py both take them from here).
# Two differ from the paper's recipe because the demo's BERT is tiny and random, not
# pretrained: a higher learning rate (5e-4 barely moves it in a few epochs) and the
# sum of violations throughout (hardest negatives after a 1-epoch warm-up, the
# paper's choice, collapse it to constant scores at this scale).
DEMO_TRAINING = dict(data_path=DEMO_FOLDER, data_name=DEMO_DATA_NAME,
                     bert_path=os.path.join(DEMO_FOLDER, "bert-tiny"), img_dim=DEMO_IMG_DIM, embed_size=64,
                     batch_size=64, learning_rate=0.002, num_epochs=4, lr_update=3,
                     vse_mean_warmup_epochs=4, workers=0, log_step=50, device="cpu")
N_BACKGROUNDS = 8


def demo_vocabulary():
    """Every word of the demo captions (whole words), plus '##s' for plurals and punctuation."""
    words = set(DEMO_OBJECTS + DEMO_COLOURS + ["a", "an", "two", "##s", ".", ","])
    for phrase in DEMO_PREFIXES + DEMO_JOINERS + DEMO_SUFFIXES:
        words.update(phrase.split())
    return sorted(words)


def _object_phrase(obj, colour, count):
    words = ([colour] if colour else []) + [obj + ("s" if count == 2 else "")]
    if count == 2:
        return "two " + " ".join(words)
    article = "an" if words[0][0] in "aeiou" else "a"
    return article + " " + " ".join(words)


def _demo_caption(objects, rng):
    """One caption naming the image's objects (a random subset of >= 2 when it has 4) in a random template.

    objects: list of (object index, colour index or -1, count).
    """
    chosen = [objects[i] for i in rng.permutation(len(objects))]
    if len(chosen) == 4 and rng.random() < 0.3:
        chosen = chosen[:3]
    phrases = [_object_phrase(DEMO_OBJECTS[o], DEMO_COLOURS[c] if c >= 0 and rng.random() < 0.85 else "",
                              count) for o, c, count in chosen]
    joiners = [DEMO_JOINERS[rng.integers(len(DEMO_JOINERS))] for _ in phrases[1:]]
    body = phrases[0] + "".join(j + p for j, p in zip(joiners, phrases[1:]))
    text = (DEMO_PREFIXES[rng.integers(len(DEMO_PREFIXES))] + body
            + DEMO_SUFFIXES[rng.integers(len(DEMO_SUFFIXES))])
    if rng.random() < 0.5:
        text = text[0].upper() + text[1:]
    return text + ("." if rng.random() < 0.5 else "")


def _pick_objects(rng):
    """The 2-4 distinct objects (indices into DEMO_OBJECTS) of one demo image."""
    return rng.choice(len(DEMO_OBJECTS), size=int(rng.integers(2, 5)), replace=False)


def _object_looks(rng):
    """(colour index or -1, count 1 or 2) of one object of a demo image."""
    colour = int(rng.integers(len(DEMO_COLOURS))) if rng.random() < 0.5 else -1
    return colour, 2 if rng.random() < 0.15 else 1


def _demo_image(prototypes, rng, n_regions, noise):
    """Regions (n_regions, img_dim) float32 of one image and its objects [(object, colour, count)]."""
    objects_proto, colours_proto, background_proto = prototypes
    objects, regions = [], []
    for obj in _pick_objects(rng):
        colour, count = _object_looks(rng)
        objects.append((int(obj), colour, count))
        centre = objects_proto[obj] + (0.8 * colours_proto[colour] if colour >= 0 else 0.0)
        regions += [centre] * (count * int(rng.integers(3, 6)))
    regions = regions[:n_regions - 4]
    backgrounds = rng.integers(N_BACKGROUNDS, size=n_regions - len(regions))
    regions = np.stack(regions + [background_proto[b] for b in backgrounds])
    regions = regions + noise * rng.standard_normal(regions.shape)
    return regions[rng.permutation(n_regions)].astype(np.float32), objects


def write_demo_split(folder, split, n_images, prototypes, rng, n_regions=36, noise=1.0):
    """Write `{split}_ims.npy` (n_images, n_regions, img_dim) float32 and `{split}_caps.txt` (5 per image)."""
    images, captions = [], []
    for _ in range(n_images):
        regions, objects = _demo_image(prototypes, rng, n_regions, noise)
        images.append(regions)
        captions += [_demo_caption(objects, rng) for _ in range(5)]
    np.save(os.path.join(folder, f"{split}_ims.npy"), np.stack(images))
    with open(os.path.join(folder, f"{split}_caps.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(captions) + "\n")


def demo_prototypes(img_dim=64, seed=0):
    """The demo's object, colour and background prototype vectors (each (count, img_dim)), from `seed`."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((len(DEMO_OBJECTS), img_dim)),
            rng.standard_normal((len(DEMO_COLOURS), img_dim)),
            rng.standard_normal((N_BACKGROUNDS, img_dim)))


def write_demo_dataset(folder, img_dim=64, n_regions=36, sizes=None, seed=0, noise=1.0,
                       with_bert=True):
    """Write the synthetic demo in the real precomp layout; deterministic from `seed`.

    Creates `{folder}/demo_precomp/{split}_ims.npy` / `{split}_caps.txt` for the
    splits of `sizes` (default DEMO_SPLITS: train 2000, dev 200, test 200,
    testall 500 images) and, with `with_bert`, a tiny random BERT whose vocabulary
    covers the captions in `{folder}/bert-tiny`.
    Returns (data_path, data_name, bert_path or None).
    """
    data_folder = os.path.join(folder, DEMO_DATA_NAME)
    os.makedirs(data_folder, exist_ok=True)
    prototypes = demo_prototypes(img_dim, seed)
    for number, (split, n_images) in enumerate((sizes or DEMO_SPLITS).items(), start=1):
        write_demo_split(data_folder, split, n_images, prototypes,
                         np.random.default_rng([seed, number]), n_regions, noise)
    bert_path = None
    if with_bert:
        bert_path = write_tiny_bert(os.path.join(folder, "bert-tiny"), demo_vocabulary(), seed=seed)
    return folder, DEMO_DATA_NAME, bert_path


# ---------------------------------------------------------------- demo as image files
#
# The same objects and captions drawn as pictures, in the official raw-image layout: each
# object word has a fixed random 3 x 3 pattern of colours, painted as a tile (12 x 12 pixels in
# a 64 x 64 image) in one cell of a 4 x 4 layout (two tiles for "two dogs"); a colour word
# frames the tile in its colour; the rest is grey noise that no caption mentions.

DEMO_IMAGES_NAME = "demo_images"
DEMO_IMAGE_SIZE = 64
DEMO_COLOUR_RGB = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 50),
                   "yellow": (235, 220, 40), "black": (10, 10, 10), "white": (250, 250, 250)}
TILE_CELLS = 3


def demo_patterns(seed=0):
    """The 3 x 3 colour pattern of each demo object: uint8 (n_objects, 3, 3, 3), from `seed`."""
    return np.random.default_rng([seed, 1000]).integers(0, 256, (len(DEMO_OBJECTS), TILE_CELLS, TILE_CELLS, 3),
                                                        dtype=np.uint8)


def paint_demo_image(objects, patterns, rng, size=DEMO_IMAGE_SIZE):
    """(size, size, 3) uint8 picture of `objects` [(object, colour or -1, count)], tiles placed by `rng`.

    size >= 32: a layout cell is size // 4 pixels, a pattern cell size // 16, a frame size // 32.
    """
    image = rng.integers(112, 144, (size, size, 3)).astype(np.uint8)
    cell, pattern_pixels, frame = size // 4, size // 16, size // 32
    slots = rng.permutation(16)
    tile = TILE_CELLS * pattern_pixels
    placed = 0
    for obj, colour, count in objects:
        pattern = np.repeat(np.repeat(patterns[obj], pattern_pixels, 0), pattern_pixels, 1)
        for _ in range(count):
            row, col = divmod(int(slots[placed]), 4)
            placed += 1
            top, left = row * cell + (cell - tile) // 2, col * cell + (cell - tile) // 2
            if colour >= 0:
                image[top - frame:top + tile + frame,
                      left - frame:left + tile + frame] = DEMO_COLOUR_RGB[DEMO_COLOURS[colour]]
            image[top:top + tile, left:left + tile] = pattern
    return image


def write_demo_image_split(data_path, split, n_images, patterns, rng, first_id, size=DEMO_IMAGE_SIZE):
    """Write `n_images` JPEGs with ids first_id.. and `precomp/{split}_caps.txt` / `_ids.txt`
    (5 captions, one id per image). Returns {id: relative path} of the images written."""
    mapping, captions = {}, []
    for image_id in range(first_id, first_id + n_images):
        objects = [(int(obj), *_object_looks(rng)) for obj in _pick_objects(rng)]
        name = f"{image_id}.jpg"
        Image.fromarray(paint_demo_image(objects, patterns, rng, size)).save(
            os.path.join(data_path, "flickr30k-images", name), quality=95, subsampling=0)
        mapping[str(image_id)] = name
        captions += [_demo_caption(objects, rng) for _ in range(5)]
    with open(os.path.join(data_path, "precomp", f"{split}_caps.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(captions) + "\n")
    with open(os.path.join(data_path, "precomp", f"{split}_ids.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(mapping) + "\n")
    return mapping


def write_demo_images(folder, sizes=None, seed=0, size=DEMO_IMAGE_SIZE, with_bert=True):
    """Write the demo as JPEG files in the official raw-image layout; deterministic from `seed`.

    Creates `{folder}/demo_images/` holding `precomp/{split}_{caps,ids}.txt`, `id_mapping.json`
    and `flickr30k-images/{id}.jpg` (size x size) for the splits of `sizes` (default DEMO_SPLITS)
    and, with `with_bert`, the tiny BERT in `{folder}/bert-tiny`.
    Returns (data_path, data_name, bert_path or None): `data_path` is the dataset folder itself.
    """
    data_path = os.path.join(folder, DEMO_IMAGES_NAME)
    for sub in ("precomp", "flickr30k-images"):
        os.makedirs(os.path.join(data_path, sub), exist_ok=True)
    patterns, mapping = demo_patterns(seed), {}
    for number, (split, n_images) in enumerate((sizes or DEMO_SPLITS).items(), start=1):
        mapping.update(write_demo_image_split(data_path, split, n_images, patterns,
                                              np.random.default_rng([seed, number, 1]), len(mapping), size))
    with open(os.path.join(data_path, "id_mapping.json"), "w", encoding="utf-8") as f:
        json.dump(mapping, f)
    bert_path = None
    if with_bert:
        bert_path = write_tiny_bert(os.path.join(folder, "bert-tiny"), demo_vocabulary(), seed=seed)
    return data_path, DEMO_IMAGES_NAME, bert_path
