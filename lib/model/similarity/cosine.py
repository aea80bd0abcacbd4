"""Cross-attention with independent dimensions: the aggregation X-Dim argues against (docs/method.md).

The same word-to-region attention as X-Dim with delta = 1 (step 1: a = tanh(w . v)),
and step 5 replaced: each word scores the cosine of its attended context u and itself,
g = sum_k u[k] w[k] / (||u|| ||w||), so every dimension counts alone.
"""
import math

import torch
import torch.nn as nn

from lib.model.encoders import l2norm
from lib.model.similarity.xdim import EPS, AttentionWeights, WordRegionAttention


class CosineSimilarity(WordRegionAttention):
    """Word score cos(u, w), no dimension weights; one parameter, `log_t_attn`."""

    def __init__(self, embed_size):
        super().__init__()
        self.log_t_attn = nn.Parameter(torch.tensor(math.log(1.0 / 0.07)))

    def prepare(self):
        return AttentionWeights(W=None, delta=None, step5_weight=None)

    def prepare_captions(self, cap, cap_lens, prepared):
        captions = super().prepare_captions(cap, cap_lens, prepared)
        captions.words = l2norm(captions.words, dim=1, eps=EPS)
        return captions

    def word_scores(self, context, context_norm, captions):
        return (context * captions.words).sum(dim=2) / context_norm
