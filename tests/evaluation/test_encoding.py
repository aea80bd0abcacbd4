"""lib.evaluation.encoding.RaggedCaptions: offsets and rows when reads come between appends."""
import torch

from lib.evaluation.encoding import RaggedCaptions


def padded_batch(lengths, width, d, seed):
    """(len(lengths), width, d) random float32 with NaN in the padding (it must never be read)."""
    emb = torch.randn(len(lengths), width, d, generator=torch.Generator().manual_seed(seed))
    for row, length in enumerate(lengths):
        emb[row, length:] = float("nan")
    return emb


def test_offsets_continue_across_appends_with_reads_between():
    # catches: the offsets of a later append restarting at 0 once an earlier read consolidated the chunks.
    batches = [([3, 1, 4], 4), ([2, 5], 6), ([1], 1)]
    ragged = RaggedCaptions(3)
    expected_rows, expected_offsets = [], [0]
    for seed, (lengths, width) in enumerate(batches):
        emb = padded_batch(lengths, width, 3, seed)
        ragged.append(emb, torch.tensor(lengths))
        for row, length in enumerate(lengths):
            expected_rows.append(emb[row, :length])
            expected_offsets.append(expected_offsets[-1] + length)
        assert ragged.offsets.tolist() == expected_offsets  # a read after every append
    assert len(ragged) == 6 and ragged.tokens.shape == (16, 3)
    for caption, rows in enumerate(expected_rows):
        start, stop = expected_offsets[caption], expected_offsets[caption + 1]
        assert torch.equal(ragged.tokens[start:stop], rows)
    padded, lengths = ragged.block(2, 6)
    assert lengths.tolist() == [4, 2, 5, 1]
    for row, caption in enumerate(range(2, 6)):
        assert torch.equal(padded[row, :lengths[row]], expected_rows[caption])
