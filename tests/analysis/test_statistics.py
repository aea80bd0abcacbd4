"""lib.analysis.statistics: word occurrences at the truncation boundary, and occurrence vectors on
data with one caption per image."""
import os

import numpy as np
import torch

from lib.analysis import statistics as analysis
from lib.data.precomp import CaptionEncoder, open_split
from lib.model.bert import load_tokenizer
from lib.model.config import ModelConfig
from lib.model.xdim_model import XDimModel

IMG_DIM, EMBED = 32, 16


def test_an_occurrence_cut_off_by_truncation_is_not_counted(tiny_bert_dir):
    # catches: `position + pieces <= max_len` for `<` (a word whose place [SEP] took would be counted).
    encoder = CaptionEncoder(load_tokenizer(tiny_bert_dir), 6)  # [CLS], 4 word pieces, [SEP]
    captions = ["dog cat cat cat", "cat cat cat dog", "cat cat cat cat dog", "dog"]
    found = analysis.find_occurrences(encoder, captions, ["dog"], progress=False)["dog"]
    assert [tuple(o) for o in found] == [(0, 1, 1), (1, 4, 1), (3, 1, 1)]
    dog = encoder.word_pieces("dog")[0][0]
    # what the model sees: dog at position 4 of caption 1; [SEP] where dog was, at 5, in caption 2
    assert encoder.encode(captions[1])[4] == dog and encoder.encode(captions[2])[5] == encoder.sep_id


def write_split(folder, images, captions):
    os.makedirs(folder / "one_precomp")
    np.save(folder / "one_precomp" / "test_ims.npy", images)
    (folder / "one_precomp" / "test_caps.txt").write_text("".join(f"{c}\n" for c in captions))
    return open_split(str(folder), "one_precomp", "test", img_dim=IMG_DIM)


def test_occurrence_vectors_pair_each_caption_with_its_image_at_one_caption_per_image(tmp_path, tiny_bert_dir):
    # catches: `caption // 5` for `caption // captions_per_image` (caption 5 scored against image 1).
    torch.manual_seed(0)
    model = XDimModel(ModelConfig(img_dim=IMG_DIM, embed_size=EMBED, bert=tiny_bert_dir))
    encoder = CaptionEncoder(load_tokenizer(tiny_bert_dir), 64)
    images = np.random.default_rng(0).standard_normal((6, 4, IMG_DIM)).astype(np.float32)
    captions = [f"a dog and a {thing}" for thing in ("cat", "cow", "bus", "cup", "bed", "car")]
    split = write_split(tmp_path / "all", images, captions)
    alone = write_split(tmp_path / "fifth", images[5:], captions[5:])  # image 5 and caption 5 only
    assert split.captions_per_image == 1
    occurrence = analysis.find_occurrences(encoder, captions, ["dog"], progress=False)["dog"][5]
    vectors = analysis.occurrence_vectors(model, split, encoder, [occurrence], progress=False)
    expected = analysis.occurrence_vectors(model, alone, encoder, [occurrence._replace(caption=0)], progress=False)
    np.testing.assert_allclose(vectors, expected, rtol=1e-6, atol=1e-9)
    other = analysis.occurrence_vectors(model, split, encoder, [occurrence._replace(caption=1)], progress=False)
    assert not np.allclose(other, expected, atol=1e-4)  # another image gives another vector
