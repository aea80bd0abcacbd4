"""The base class of every similarity: the contract of lib/model/similarity/__init__.py as code."""
import torch.nn as nn

from lib.model.similarity.blocks import score_padded


class Similarity(nn.Module):
    """An image-caption similarity that scores one block at a time.

    A subclass implements `score` and, when it pays, `prepare` and `prepare_captions`.
    Calling the module, `sim(img, cap, cap_lens, img_lens=None, rows_per_block=None)`,
    scores every image against every caption through the block scheduler
    (lib/model/similarity/blocks.py), so a subclass never deals with memory.

    `block_cost`: working memory per (image, real token) row relative to the fast
    X-Dim kernel; the scheduler divides its row budget by it (e.g. 4 for a similarity
    that holds four times as much per row).
    """

    block_cost = 1.0

    def prepare(self):
        """Work that depends on the parameters only, done once per call (e.g. X-Dim's W, delta).

        -> anything `prepare_captions` and `score` understand; default None.
        """
        return None

    def prepare_captions(self, cap, cap_lens, prepared):
        """Work that depends on one run of captions, done once and reused for every image block.

        cap (n, L, d), cap_lens (n,), prepared: what `prepare` returned.
        -> what `score` receives as `prepared`; default `prepared` unchanged.
        """
        return prepared

    def score(self, img, cap, cap_lens, img_lens, prepared):
        """img (b, R, d), cap (n, L, d), cap_lens (n,) int64, img_lens (b,) int64 or None -> (b, n).

        cap[c, cap_lens[c]:] is padding; regions past img_lens[i] (when given) are padding.
        Inputs are float32 (float64 when the caller passes float64).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement score()")

    def forward(self, img, cap, cap_lens, img_lens=None, rows_per_block=None):
        """img (n_img, R, d), cap (n_cap, L, d), cap_lens (n_cap,), img_lens (n_img,) or None -> (n_img, n_cap)."""
        return score_padded(self, img, cap, cap_lens, img_lens, rows_per_block)
