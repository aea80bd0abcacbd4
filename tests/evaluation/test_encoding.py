"""lib/evaluation/encoding.py: the batch encoder, ragged captions and storage dtypes."""
import os

import numpy as np
import pytest
import torch
from helpers import TINY_REGIONS, _padded_batch

from lib.data.precomp import (
    CaptionDataset,
    open_split,
)
from lib.evaluation import encoding, scoring
from lib.evaluation.encoding import caption_embedding_batches, image_embedding_batches
from lib.model.xdim_model import XDimModel


class IdentityModel:
    """Stands in for the model in the batch encoder: embeddings are the inputs themselves."""

    def encode_images(self, images, lengths):
        return images

    def encode_captions(self, ids, lengths):
        return ids


def test_evaluation_encoding_covers_split_in_order(tiny_precomp, encoder):
    files = open_split(*tiny_precomp, "testall")
    images = list(image_embedding_batches(IdentityModel(), files.images, batch_size=4, progress=False))
    assert torch.cat([b[2] for b in images]).tolist() == list(range(10))
    assert all(b[0].shape[1] == TINY_REGIONS for b in images)
    assert torch.equal(torch.cat([b[0] for b in images]), torch.from_numpy(np.array(files.images)))
    captions = list(caption_embedding_batches(IdentityModel(), CaptionDataset(files, encoder), batch_size=16, progress=False))
    assert torch.cat([b[2] for b in captions]).tolist() == list(range(50))


def test_ragged_round_trip_and_gather():
    emb, lengths = _padded_batch(0, 7, 9, 5)
    ragged = encoding.RaggedCaptions.from_padded(emb, lengths)
    assert len(ragged) == 7
    assert ragged.tokens.shape == (int(lengths.sum()), 5)
    assert ragged.offsets.tolist() == [0] + torch.cumsum(lengths, 0).tolist()
    assert ragged.nbytes == int(lengths.sum()) * 5 * 4 + 8 * 8
    padded, lens = ragged.block(2, 6)
    assert lens.tolist() == lengths[2:6].tolist()
    assert padded.shape == (4, int(lengths[2:6].max()), 5)
    for row, c in enumerate(range(2, 6)):
        n = int(lengths[c])
        assert torch.equal(padded[row, :n], emb[c, :n])
        assert not padded[row, n:].any()
    picked, picked_lens = ragged.gather(torch.tensor([6, 0, 3]))
    for row, c in enumerate([6, 0, 3]):
        assert torch.equal(picked[row, :int(lengths[c])], emb[c, :int(lengths[c])])
    assert picked_lens.tolist() == lengths[[6, 0, 3]].tolist()


def test_ragged_append_batches_of_different_widths_and_half_storage():
    # catches: offsets restarting at 0 for captions appended after a read (which consolidates the
    # chunks), rows of an earlier batch lost, padding stored.
    batches = [_padded_batch(1, 3, 4, 6), _padded_batch(2, 5, 11, 6), _padded_batch(3, 2, 1, 6)]
    ragged = encoding.RaggedCaptions(6, torch.float16)
    rows, offsets = [], [0]
    for emb, lengths in batches:
        ragged.append(emb, lengths)
        for caption, length in zip(emb, lengths.tolist()):
            rows.append(caption[:length].to(torch.float16))
            offsets.append(offsets[-1] + length)
        assert ragged.offsets.tolist() == offsets  # a read between appends
    assert len(ragged) == 10 and ragged.tokens.dtype == torch.float16
    assert ragged.nbytes == offsets[-1] * 6 * 2 + 11 * 8
    for caption, expected in enumerate(rows):
        assert torch.equal(ragged.tokens[offsets[caption]:offsets[caption + 1]], expected)
    padded, lens = ragged.block(1, 9)  # across all three batches
    assert padded.dtype == torch.float32 and lens.tolist() == [len(r) for r in rows[1:9]]
    for row, caption in enumerate(range(1, 9)):
        assert torch.equal(padded[row, :len(rows[caption])], rows[caption].float())
        assert not padded[row, len(rows[caption]):].any()


def test_ragged_rejects_bad_lengths():
    with pytest.raises(ValueError):
        encoding.RaggedCaptions.from_padded(torch.zeros(2, 3, 4), torch.tensor([3, 4]))


@pytest.mark.parametrize("storage", ["float16", "bfloat16"])
def test_storage_dtype_holds_the_image_and_caption_embeddings(trained, tiny_precomp, storage):
    # catches: encode_split_images allocating float32 whatever --storage says.
    model = XDimModel.from_checkpoint(os.path.join(trained.model_name, "model_best.pth"))
    split = open_split(*tiny_precomp, "test")
    encoder = scoring.model_caption_tokenizer(model)
    img32, cap32 = scoring.encode_split(model, split, encoder, batch_size=4, progress=False)
    img, cap = scoring.encode_split(model, split, encoder, batch_size=4, storage=storage, progress=False)
    dtype = encoding.STORAGE_DTYPES[storage]
    assert img32.dtype == cap32.tokens.dtype == torch.float32
    assert img.dtype == cap.tokens.dtype == dtype
    assert torch.equal(img, img32.to(dtype)) and torch.equal(cap.tokens, cap32.tokens.to(dtype))
