"""The block scheduler: scoring many images against many captions in memory-bounded blocks.

Every similarity (the contract is in lib/model/similarity/__init__.py) scores one block at a
time; this module alone decides the blocks, for training (`score_padded`, under
autograd) and for evaluation (lib.evaluation.scoring, captions stored ragged on the CPU):

- captions are sorted by length and cut into consecutive runs holding at most `rows`
  real tokens (at least one caption each); a run is padded only to its own longest
  caption;
- images are cut into blocks of max(1, rows // real tokens of the run), so a block
  holds about `rows` (image, real token) rows;
- the similarity's `prepare()` runs once per call, `prepare_captions()` once per
  caption run and `score()` once per (image block, caption run).

`rows` defaults per device (DEFAULT_ROWS_PER_BLOCK): cache-sized blocks on CPUs,
large ones on GPUs (fewer, bigger kernels); a similarity's `block_cost` divides it.
Under autograd every block's activations stay alive until backward whatever the size.
"""
from typing import List, NamedTuple, Tuple

import torch

DEFAULT_ROWS_PER_BLOCK = {"cpu": 2048, "cuda": 32768}


class CaptionRun(NamedTuple):
    """One run of length-sorted captions and the image blocks scored against it.

    columns (m,) int64 CPU: the captions' indices in the caller's order;
    max_len: their longest length; images: [(i0, i1), ...] image ranges covering all images.
    """
    columns: torch.Tensor
    max_len: int
    images: List[Tuple[int, int]]


def accumulation_dtype(tensor):
    """float32, or float64 when the inputs are: scores and reductions never run in half precision."""
    return torch.promote_types(tensor.dtype, torch.float32)


def row_budget(similarity, device, rows_per_block=None):
    """(image, real token) rows per block: `rows_per_block` or the device default, over `block_cost`."""
    rows = rows_per_block or DEFAULT_ROWS_PER_BLOCK.get(torch.device(device).type, 2048)
    return max(1, int(rows / getattr(similarity, "block_cost", 1)))


def caption_runs(sorted_lens, rows):
    """Consecutive ranges [c0, c1) of `sorted_lens` (n,) summing to at most `rows` (>= 1 caption each)."""
    runs, start, total = [], 0, 0
    for index, length in enumerate(sorted_lens.tolist()):
        if total + length > rows and index > start:
            runs.append((start, index))
            start, total = index, 0
        total += length
    if start < len(sorted_lens):
        runs.append((start, len(sorted_lens)))
    return runs


def plan(cap_lens, n_img, rows):
    """The blocks for n_img images and captions of lengths `cap_lens` (n,): -> list of CaptionRun.

    Every (image, caption) pair lies in exactly one block, whatever `rows` is; no pair, no block.
    """
    cap_lens = torch.as_tensor(cap_lens).long().cpu()
    if n_img == 0:
        return []
    order = torch.argsort(cap_lens, stable=True)
    sorted_lens = cap_lens[order]
    blocks = []
    for c0, c1 in caption_runs(sorted_lens, rows):
        step = max(1, rows // max(int(sorted_lens[c0:c1].sum()), 1))
        images = [(i0, min(i0 + step, n_img)) for i0 in range(0, n_img, step)]
        blocks.append(CaptionRun(order[c0:c1], int(sorted_lens[c1 - 1]), images))
    return blocks


def score_blocks(similarity, blocks, captions_of, images_of):
    """Run the similarity over planned blocks; yields (run, scores (n_img, len(run.columns))) per run.

    captions_of(run) -> (cap (m, L, d), cap_lens (m,)) for a CaptionRun;
    images_of(i0, i1) -> (img (i1 - i0, R, d), img_lens (i1 - i0,) or None).
    """
    prepared = similarity.prepare()
    for run in blocks:
        cap, lens = captions_of(run)
        for_captions = similarity.prepare_captions(cap, lens, prepared)
        scores = None
        for i0, i1 in run.images:
            img, img_lens = images_of(i0, i1)
            block = similarity.score(img, cap, lens, img_lens, for_captions)
            if scores is None:  # one buffer per run: many small live blocks would fragment the heap
                scores = block.new_empty(run.images[-1][1], block.shape[1])
            scores[i0:i1] = block
        yield run, scores


def score_padded(similarity, img, cap, cap_lens, img_lens=None, rows_per_block=None):
    """Every image against every caption, differentiably.

    img (n_img, R, d); cap (n_cap, L, d) with caption c's real tokens in
    cap[c, :cap_lens[c]] (the rest is ignored whatever it holds); cap_lens (n_cap,);
    img_lens (n_img,) or None. -> (n_img, n_cap) in float32 (float64 for float64 inputs).
    """
    dtype = accumulation_dtype(img)
    img, cap = img.to(dtype), cap.to(dtype)
    cap_lens = torch.as_tensor(cap_lens, device=cap.device).long()
    if img_lens is not None:
        img_lens = torch.as_tensor(img_lens, device=img.device).long()
    n_img, n_cap = img.shape[0], cap.shape[0]
    if n_img == 0 or n_cap == 0:
        return img.new_zeros(n_img, n_cap)
    blocks = plan(cap_lens, n_img, row_budget(similarity, img.device, rows_per_block))

    def captions_of(run):
        columns = run.columns.to(cap.device)
        return cap[:, :run.max_len].index_select(0, columns), cap_lens.index_select(0, columns)

    def images_of(i0, i1):
        return img[i0:i1], None if img_lens is None else img_lens[i0:i1]

    sorted_scores = torch.cat([scores for _, scores in score_blocks(similarity, blocks, captions_of, images_of)],
                              dim=1)
    order = torch.cat([run.columns for run in blocks])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(n_cap)
    return sorted_scores.index_select(1, inverse.to(sorted_scores.device))
