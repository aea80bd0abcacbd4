"""The X-Dim similarity, fast kernel: dependency weights and pair scores (docs/method.md).

The scheduler (lib/model/similarity/blocks.py) hands the kernel one block of images and one
run of captions at a time. Inside a block the captions' real tokens are gathered into
one flat list, so the single irreducible d x d product (step 5) runs as one large
matrix product over (image, real token) rows and padding costs nothing there.

`WordRegionAttention` holds what X-Dim shares with its ablations (steps 1-4 and 6);
`XDimSimilarity` adds the dependency weights and step 5.
"""
import math
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from lib.model.encoders import l2norm
from lib.model.similarity.base import Similarity
from lib.model.similarity.blocks import accumulation_dtype

EPS = 1e-8
# A mask entry above this counts as a kept dependency (mask_density, analyze.py).
MASK_ON = 0.5


class AttentionWeights(NamedTuple):
    """What `prepare()` computes once per call.

    W (d, d) dependency weights, rows unit-norm (None without step 5); delta (d,) the
    step-1 dimension weights (None: no weighting); step5_weight (d, d) W transposed,
    in the dtype step 5 runs in.
    """
    W: Optional[torch.Tensor]
    delta: Optional[torch.Tensor]
    step5_weight: Optional[torch.Tensor]


class CaptionBlock:
    """One run of captions in the flattened real-token layout, reused for every image block.

    weighted (n, L, d): words times delta (the words themselves without delta);
    mask (n, L, 1, 1); token_index (T,): flat positions of real tokens; words (T, d):
    their embeddings; owner (T,): each real token's caption; lengths (n,), at least 1;
    weights: the AttentionWeights.
    """

    def __init__(self, cap, cap_lens, weights):
        n, L, _ = cap.shape
        real = torch.arange(L, device=cap.device).unsqueeze(0) < cap_lens.unsqueeze(1)
        self.weights = weights
        self.weighted = cap if weights.delta is None else cap * weights.delta.to(cap.dtype)
        self.mask = real.view(n, L, 1, 1).to(cap.dtype)
        self.token_index = real.reshape(-1).nonzero().squeeze(1)
        self.words = cap.reshape(n * L, -1)[self.token_index]
        self.owner = self.token_index // L
        self.lengths = cap_lens.clamp(min=1).to(accumulation_dtype(cap))


class WordRegionAttention(Similarity):
    """Word-to-region attention (steps 1-4) and the mean over words (step 6), fast layout.

    A subclass defines the parameter `log_t_attn` (attention temperature in log space),
    `prepare()` returning AttentionWeights, and `word_scores` (step 5).
    Everything here runs in float32 (float64 for float64 inputs), also under autocast;
    a subclass picks the dtype of its own step 5 through `step5_weight`.
    """

    def prepare_captions(self, cap, cap_lens, prepared):
        return CaptionBlock(cap, cap_lens, prepared)

    def score(self, img, cap, cap_lens, img_lens, captions):
        """img (b, R, d) against one CaptionBlock -> (b, n) (cap, cap_lens are in `captions`)."""
        with torch.autocast(img.device.type, enabled=False):
            return self.caption_means(self.word_scores(*self.attended_context(img, img_lens, captions), captions),
                                      captions)

    @staticmethod
    def caption_means(word_scores, captions):
        """Step 6: word_scores (b, T) -> (b, n), the mean over each caption's real tokens (a segment sum)."""
        totals = word_scores.new_zeros(word_scores.shape[0], captions.mask.shape[0])
        return totals.index_add_(1, captions.owner, word_scores) / captions.lengths

    @torch.no_grad()
    def explain(self, img, cap, cap_lens, img_lens=None):
        """What one caption's scores against b images are made of, through the same kernel as `score`.

        img (b, R, d), cap (1, L, d), cap_lens (1,), img_lens (b,) or None. -> dict of
        attention (b, T, R): each of the caption's T = cap_lens[0] real tokens' weights over
        the regions (rows sum to 1); word_scores (b, T); scores (b,), their mean, equal to
        calling the module.
        """
        with torch.autocast(img.device.type, enabled=False):
            captions = self.prepare_captions(cap, cap_lens, self.prepare())
            attention = self.attention(img, img_lens, captions)
            word_scores = self.word_scores(*self.attended_context(img, img_lens, captions), captions)
            return {"attention": attention, "word_scores": word_scores,
                    "scores": self.caption_means(word_scores, captions)[:, 0]}

    def attended_context(self, regions, img_lens, captions):
        """Steps 1-4 for real tokens: -> (context (b, T, d) before step 4's l2n, ||context|| + EPS (b, T))."""
        context = torch.bmm(self.attention(regions, img_lens, captions), regions)
        return context, torch.linalg.vector_norm(context, dim=2) + EPS

    def attention(self, regions, img_lens, captions):
        """Steps 1-3 for real tokens: regions (b, R, d), one CaptionBlock -> (b, T, R), each row sums to 1.

        These are the word-to-region attention weights (analyze.py draws them).
        """
        b, R, d = regions.shape
        n_cap, L = captions.mask.shape[:2]
        # Step 1: relevance of every word to every region, dimensions weighted by delta.
        relevance = captions.weighted.reshape(n_cap * L, d) @ regions.reshape(b * R, d).t()
        relevance = torch.tanh(relevance).view(n_cap, L, b, R)
        # Step 2: LeakyReLU, then l2n across the caption's real words for each region.
        relevance = F.leaky_relu(relevance, 0.1) * captions.mask
        relevance = l2norm(relevance, dim=1, eps=EPS)
        # Step 3: attention over regions for real tokens only, laid out (b, T, R) for one batched product.
        logits = torch.exp(self.log_t_attn) * relevance.reshape(n_cap * L, b, R).transpose(0, 1)[:, captions.token_index]
        if img_lens is not None:
            padded = torch.arange(R, device=regions.device).view(1, 1, R) >= img_lens.view(b, 1, 1)
            logits = logits.masked_fill(padded, float("-inf"))
        return torch.softmax(logits, dim=2).contiguous()

    def word_scores(self, context, context_norm, captions):
        """Step 5: context (b, T, d), context_norm (b, T), one CaptionBlock -> word scores (b, T)."""
        raise NotImplementedError


class XDimSimilarity(WordRegionAttention):
    """Learned dependency between embedding dimensions, masked adaptively.

    Parameters (docs/method.md maps them to the equations and the official key names):
    `E` (d, d) dependency logits, `lam` (d,) threshold scales, `log_t_mask` and
    `log_t_attn` the mask and attention temperatures in log space.
    Under autocast only step 5, the d x d product (over 90% of the FLOPs), runs in the
    autocast dtype; steps 1-4, whose rounding errors the attention temperature
    amplifies, the dependency weights and all reductions stay in float32.
    """

    def __init__(self, embed_size):
        super().__init__()
        self.E = nn.Parameter(torch.randn(embed_size, embed_size))
        self.lam = nn.Parameter(2.5 + 0.1 * torch.randn(embed_size))
        self.log_t_mask = nn.Parameter(torch.tensor(4.0))
        self.log_t_attn = nn.Parameter(torch.tensor(math.log(1.0 / 0.07)))

    def mask_parts(self):
        """P = sigmoid(E) (d, d), the row thresholds theta (d,) and the mask (d, d); float32."""
        with torch.autocast(self.E.device.type, enabled=False):
            P = torch.sigmoid(self.E)
            theta = P.mean(dim=1) + self.lam * P.std(dim=1)
            mask = torch.tanh(torch.exp(torch.exp(self.log_t_mask) * (P - theta[:, None])))
        return P, theta, mask

    def dependency_weights(self):
        """W (d, d), rows unit-norm, and delta (d,) its column sums; never in half precision."""
        P, _, mask = self.mask_parts()
        with torch.autocast(self.E.device.type, enabled=False):
            W = l2norm(mask * P, dim=1, eps=EPS)
        return W, W.sum(dim=0)

    @torch.no_grad()
    def statistics(self):
        """How sparse the adaptive mask is, as floats (logged during training, written by analyze.py).

        mask_density: share of mask entries above MASK_ON (0.5); mean_threshold: mean of
        the row thresholds theta; t_mask, t_attn: the mask and attention temperatures
        (exponentiated).
        """
        _, theta, mask = self.mask_parts()
        return {"mask_density": (mask > MASK_ON).sum().item() / mask.numel(),
                "mean_threshold": theta.mean().item(),
                "t_mask": self.log_t_mask.exp().item(), "t_attn": self.log_t_attn.exp().item()}

    def prepare(self):
        W, delta = self.dependency_weights()
        return AttentionWeights(W, delta, in_autocast_dtype(W.t()))

    def word_scores(self, context, context_norm, captions):
        b, _, d = context.shape
        step5_weight = captions.weights.step5_weight
        # Step 4's l2n is folded into step 5's norms: with n = ||context|| + eps,
        # sum(s) / (||s|| + eps) equals sum(s') / (||s'|| + eps * n) for s' = n * s.
        if torch.is_grad_enabled():
            rows = (context * captions.words).view(-1, d)
        else:  # evaluation: reuse context's memory (autograd would need the original)
            rows = context.mul_(captions.words).view(-1, d)
        # The dependency-aware aggregation: one matrix product for all (image, token) rows.
        aggregated = (rows.to(step5_weight.dtype) @ step5_weight).view(b, -1, d)
        norms = torch.linalg.vector_norm(aggregated, dim=2, dtype=context.dtype)
        return aggregated.sum(dim=2, dtype=context.dtype) / (norms + EPS * context_norm)


def in_autocast_dtype(weight):
    """`weight` cast to the autocast dtype of its device when autocast is on there, else unchanged."""
    device = weight.device.type
    return weight.to(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else weight
