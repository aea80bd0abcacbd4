"""The X-Dim similarity (spec section 4): dimension dependency weights and pair scores.

Scores are computed for many images and captions at once, block by block:
a block of images against a block of captions whose real tokens are gathered
into one flat list, so the single irreducible d x d product (step 5) runs as one
large matrix product over (image, real token) rows and padding costs nothing.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from lib.encoders import l2norm
from lib.similarity import reference

EPS = 1e-8
# A mask entry above this counts as a kept dependency (mask_density, analyze.py).
MASK_ON = 0.5


class XDimSimilarity(nn.Module):
    """Learned dependency between embedding dimensions, masked adaptively.

    Parameters (spec names): `E` (d, d) dependency logits, `lam` (d,) threshold
    scales, `log_t_mask` and `log_t_attn` the mask and attention temperatures in
    log space.

    `rows_per_block` sets the block size: about that many (image, token) rows of d
    floats are alive at once, several times over. None picks a default per device:
    cache-sized blocks on CPUs, large ones on GPUs (fewer, bigger kernels). When
    training, autograd keeps every block's activations whatever the size.
    """

    DEFAULT_ROWS_PER_BLOCK = {"cpu": 2048, "cuda": 32768}

    def __init__(self, embed_size, rows_per_block=None):
        super().__init__()
        self.E = nn.Parameter(torch.randn(embed_size, embed_size))
        self.lam = nn.Parameter(2.5 + 0.1 * torch.randn(embed_size))
        self.log_t_mask = nn.Parameter(torch.tensor(4.0))
        self.log_t_attn = nn.Parameter(torch.tensor(math.log(1.0 / 0.07)))
        self.rows_per_block = rows_per_block

    def dependency_weights(self):
        """W (d, d), rows unit-norm, and delta (d,) its column sums; never in half precision."""
        with torch.autocast(self.E.device.type, enabled=False):
            P = torch.sigmoid(self.E)
            theta = P.mean(dim=1, keepdim=True) + self.lam.unsqueeze(1) * P.std(dim=1, keepdim=True)
            mask = torch.tanh(torch.exp(torch.exp(self.log_t_mask) * (P - theta)))
            W = l2norm(mask * P, dim=1, eps=EPS)
        return W, W.sum(dim=0)

    @torch.no_grad()
    def statistics(self):
        """How sparse the adaptive mask is, as floats (logged during training, written by analyze.py).

        mask_density: share of mask entries M[i, j] above 0.5; mean_threshold: mean of
        the row thresholds theta; t_mask, t_attn: the mask and attention temperatures
        (exponentiated). Computed from the reference equations, in float32.
        """
        with torch.autocast(self.E.device.type, enabled=False):
            parts = reference.dependency_weights(self.E.float(), self.lam.float(), self.log_t_mask.float())
        return {"mask_density": (parts["mask"] > MASK_ON).sum().item() / parts["mask"].numel(),
                "mean_threshold": parts["theta"].mean().item(),
                "t_mask": self.log_t_mask.exp().item(), "t_attn": self.log_t_attn.exp().item()}

    def forward(self, img_emb, cap_emb, cap_lens, img_lens=None):
        """Pair scores.

        img_emb (n_img, R, d); cap_emb (n_cap, L, d); cap_lens (n_cap,) real tokens per
        caption (positions past a caption's length are ignored whatever they hold);
        img_lens (n_img,) or None: when given, regions past an image's length take no
        part in attention.
        Returns (n_img, n_cap), float32 (float64 for float64 inputs).

        Under autocast only step 5, the d x d product (over 90% of the FLOPs), runs in
        the autocast dtype; steps 1-4, whose rounding errors the attention temperature
        amplifies, and all reductions stay in float32.
        """
        device = img_emb.device.type
        W, delta = self.dependency_weights()
        step5_weight = W.t().to(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else W.t()
        dtype = accumulation_dtype(img_emb)
        img_emb, cap_emb = img_emb.to(dtype), cap_emb.to(dtype)
        cap_lens = torch.as_tensor(cap_lens, device=cap_emb.device).long()
        if img_lens is not None:
            img_lens = torch.as_tensor(img_lens, device=img_emb.device).long()
        scores = img_emb.new_empty(img_emb.shape[0], cap_emb.shape[0])
        with torch.autocast(device, enabled=False):
            block_rows = self.rows_per_block or self.DEFAULT_ROWS_PER_BLOCK.get(device, 2048)
            for c0, c1 in self._caption_blocks(cap_lens, block_rows):
                step = max(1, block_rows // max(int(cap_lens[c0:c1].sum()), 1))
                captions = _CaptionBlock(cap_emb[c0:c1], cap_lens[c0:c1], delta)
                for i0 in range(0, img_emb.shape[0], step):
                    lens = None if img_lens is None else img_lens[i0:i0 + step]
                    scores[i0:i0 + step, c0:c1] = self._score_block(img_emb[i0:i0 + step], lens, captions,
                                                                    step5_weight)
        return scores

    @staticmethod
    def _caption_blocks(cap_lens, rows):
        """Consecutive caption ranges [c0, c1) holding at most `rows` tokens (>= 1 caption)."""
        ends = torch.cumsum(cap_lens, 0).tolist()
        start, base = 0, 0
        for index, end in enumerate(ends):
            if end - base > rows and index > start:
                yield start, index
                start, base = index, ends[index - 1]
        if start < len(ends):
            yield start, len(ends)

    def _score_block(self, regions, img_lens, captions, step5_weight):
        """regions (b, R, d) against one caption block -> (b, n_cap_block).

        step5_weight (d, d) is W transposed, in the dtype step 5 runs in.
        """
        b, R, d = regions.shape
        n_cap, L = captions.mask.shape[:2]
        # Step 1: relevance of every word to every region, dimensions weighted by delta.
        relevance = captions.weighted.reshape(n_cap * L, d) @ regions.reshape(b * R, d).t()
        relevance = torch.tanh(relevance).view(n_cap, L, b, R)
        # Step 2: LeakyReLU, then l2n across the caption's real words for each region.
        relevance = F.leaky_relu(relevance, 0.1) * captions.mask
        relevance = l2norm(relevance, dim=1, eps=EPS)
        # Steps 3-4: attention over regions for real tokens only, laid out (b, T, R) for one batched product.
        logits = torch.exp(self.log_t_attn) * relevance.reshape(n_cap * L, b, R).transpose(0, 1)[:, captions.token_index]
        if img_lens is not None:
            padded = torch.arange(R, device=regions.device).view(1, 1, R) >= img_lens.view(b, 1, 1)
            logits = logits.masked_fill(padded, float("-inf"))
        context = torch.bmm(torch.softmax(logits, dim=2).contiguous(), regions)  # (b, T, d)
        # Step 4's l2n is folded into step 5's norms: with n = ||context|| + eps,
        # sum(s) / (||s|| + eps) equals sum(s') / (||s'|| + eps * n) for s' = n * s.
        context_norm = torch.linalg.vector_norm(context, dim=2) + EPS
        # Step 5: the dependency-aware aggregation, one matrix product for all (image, token) rows.
        if torch.is_grad_enabled():
            rows = (context * captions.words).view(-1, d)
        else:  # evaluation: reuse context's memory (autograd would need the original)
            rows = context.mul_(captions.words).view(-1, d)
        aggregated = (rows.to(step5_weight.dtype) @ step5_weight).view(b, -1, d)
        norms = torch.linalg.vector_norm(aggregated, dim=2, dtype=regions.dtype)
        word_scores = aggregated.sum(dim=2, dtype=regions.dtype) / (norms + EPS * context_norm)
        # Step 6: mean over each caption's real tokens (a segment sum).
        totals = word_scores.new_zeros(b, n_cap).index_add_(1, captions.owner, word_scores)
        return totals / captions.lengths


def accumulation_dtype(tensor):
    """float32, or float64 when the inputs are: reductions never run in half precision."""
    return torch.promote_types(tensor.dtype, torch.float32)


class _CaptionBlock:
    """One block of captions, prepared once and scored against every image block.

    weighted (n, L, d): words times delta; mask (n, L, 1, 1); token_index (T,): flat
    positions of real tokens; words (T, d): their embeddings; owner (T,): each real
    token's caption; lengths (n,), at least 1.
    """

    def __init__(self, cap_emb, cap_lens, delta):
        n, L, _ = cap_emb.shape
        real = torch.arange(L, device=cap_emb.device).unsqueeze(0) < cap_lens.unsqueeze(1)
        self.weighted = cap_emb * delta.to(cap_emb.dtype)
        self.mask = real.view(n, L, 1, 1).to(cap_emb.dtype)
        self.token_index = real.reshape(-1).nonzero().squeeze(1)
        self.words = cap_emb.reshape(n * L, -1)[self.token_index]
        self.owner = self.token_index // L
        self.lengths = cap_lens.clamp(min=1).to(accumulation_dtype(cap_emb))
