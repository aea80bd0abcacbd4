"""The X-Dim equations written out step by step on padded tensors, with no speed tricks.

This is the readable statement of the method (docs/method.md walks through the same
steps): every intermediate is materialised with its own name and shape, in whatever
dtype the inputs have. It is slow and memory-hungry (it holds (b, n, L, R) and
(b, n, L, d) tensors), so it serves as the yardstick the fast kernel is tested
against, as a `--sim reference` choice for debugging, and as the source of the
intermediates that analyze.py plots.

Symbols: b images with R regions, n captions with L token slots of which the first
`cap_lens[c]` are real, d embedding dimensions.
"""
import torch
import torch.nn.functional as F

from lib.model.similarity.xdim import XDimSimilarity

EPS = 1e-8


def l2n(x, dim):
    """x / (||x|| + EPS) along `dim` (the epsilon is added to the norm, not under the root)."""
    return x / (x.norm(dim=dim, keepdim=True) + EPS)


def dependency_weights(E, lam, log_t_mask):
    """The dimension dependency weights and their parts.

    E (d, d) logits, lam (d,) threshold scales, log_t_mask () the mask temperature in
    log space. Returns a dict of
      P (d, d)      sigmoid(E): how strongly dimension j co-represents with dimension i;
      theta (d,)    per-row threshold mean_j P[i, j] + lam_i * std_j P[i, j] (unbiased std);
      mask (d, d)   tanh(exp(t_mask * (P - theta))): ~0 far below the threshold, ~1 above;
      W (d, d)      mask * P with every row l2-normalised;
      delta (d,)    column sums of W: how much each dimension is drawn on overall.
    """
    P = torch.sigmoid(E)
    theta = P.mean(dim=1) + lam * P.std(dim=1)
    mask = torch.tanh(torch.exp(torch.exp(log_t_mask) * (P - theta[:, None])))
    W = l2n(mask * P, dim=1)
    return {"P": P, "theta": theta, "mask": mask, "W": W, "delta": W.sum(dim=0)}


def token_mask(cap_lens, max_len):
    """(n,) real-token counts -> (n, L) boolean, True at real tokens."""
    return torch.arange(max_len, device=cap_lens.device)[None, :] < cap_lens[:, None]


def xdim_steps(img, cap, cap_lens, W, delta, log_t_attn, img_lens=None):
    """Every intermediate of the X-Dim pair scores.

    img (b, R, d) region embeddings; cap (n, L, d) token embeddings; cap_lens (n,)
    real tokens per caption; W (d, d), delta (d,) from `dependency_weights`;
    log_t_attn () the attention temperature in log space; img_lens (b,) or None:
    regions past an image's length take no part in attention.

    Returns a dict (pairs indexed [image, caption, ...]):
      relevance (b, n, L, R)       step 2's word-region relevance, l2-normalised over words;
      attention (b, n, L, R)       step 3's softmax over regions;
      context (b, n, L, d)         step 4's attended context u, l2-normalised;
      correspondence (b, n, L, d)  u * w, the per-dimension word-region correspondence;
      aggregated (b, n, L, d)      step 5's dependency-aware aggregation s = (u * w) @ W^T;
      word_scores (b, n, L)        g = sum(s) / ||s||, 0 at padded tokens;
      scores (b, n)                step 6's mean of g over each caption's real tokens.
    """
    real = token_mask(cap_lens, cap.shape[1]).to(cap.dtype)  # (n, L)
    # Step 1: a[l, r] = tanh(sum_j w_l[j] delta_j v_r[j]).
    a = torch.tanh(torch.einsum("nld,brd->bnlr", cap * delta, img))
    # Step 2: LeakyReLU, then l2n over the caption's real words, per region.
    a = F.leaky_relu(a, 0.1) * real[None, :, :, None]
    relevance = l2n(a, dim=2)
    # Step 3: softmax over regions with temperature exp(log_t_attn).
    logits = torch.exp(log_t_attn) * relevance
    if img_lens is not None:
        padded = torch.arange(img.shape[1], device=img.device)[None, :] >= img_lens[:, None]  # (b, R)
        logits = logits.masked_fill(padded[:, None, None, :], float("-inf"))
    attention = torch.softmax(logits, dim=3)
    # Step 4: attended context per word.
    context = l2n(torch.einsum("bnlr,brd->bnld", attention, img), dim=3)
    # Step 5: dependency-aware aggregation and word score.
    correspondence = context * cap[None]
    aggregated = correspondence @ W.t()
    word_scores = aggregated.sum(dim=3) / (aggregated.norm(dim=3) + EPS) * real[None]
    # Step 6: mean over real tokens.
    scores = word_scores.sum(dim=2) / cap_lens.clamp(min=1).to(word_scores.dtype)[None, :]
    return {"relevance": relevance, "attention": attention, "context": context,
            "correspondence": correspondence, "aggregated": aggregated,
            "word_scores": word_scores, "scores": scores}


class ReferenceSimilarity(XDimSimilarity):
    """`--sim reference`: X-Dim's parameters scored by the step-by-step equations above.

    Same parameters (and checkpoint keys) as the fast kernel, padded layout, slow:
    for debugging and for checking the kernel. Under autocast the products run in the
    autocast dtype (no precision policy of its own).
    """

    block_cost = 4.0  # (b, n, L, R) and several (b, n, L, d) tensors per block, padding included

    def prepare(self):
        return dependency_weights(self.E, self.lam, self.log_t_mask)

    def prepare_captions(self, cap, cap_lens, prepared):
        return prepared

    def score(self, img, cap, cap_lens, img_lens, weights):
        return xdim_steps(img, cap, cap_lens, weights["W"], weights["delta"], self.log_t_attn, img_lens)["scores"]

    @torch.no_grad()
    def explain(self, img, cap, cap_lens, img_lens=None):
        """The fast kernel's `explain` from the equations above: one caption (1, L, d) against b images."""
        weights = self.prepare()
        steps = xdim_steps(img, cap, cap_lens, weights["W"], weights["delta"], self.log_t_attn, img_lens)
        real = int(cap_lens[0])
        return {"attention": steps["attention"][:, 0, :real], "word_scores": steps["word_scores"][:, 0, :real],
                "scores": steps["scores"][:, 0]}
