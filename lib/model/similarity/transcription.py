"""X-Dim's equations and their ablations, one pair at a time in float64 numpy.

A registry entry may name such a reference (`SimilarityEntry.reference`): a function
`(sim, img (n_img, R, d), cap (n_cap, L, d), cap_lens (n_cap,)) -> (n_img, n_cap)` float64
numpy scores, computed from the module's parameters by the plain equations. The registry's
tests compare every entry that has one with its batched, blocked scores. It loops over
pairs in Python: for tests on small inputs only.
"""
import numpy as np


def l2n(x, axis):
    return x / (np.sqrt((x ** 2).sum(axis=axis, keepdims=True)) + 1e-8)


def dependency_weights(E, lam, log_t_mask, masked=True):
    """The dependency weights W (d, d) and delta (d,); masked=False: W = row-l2n(P)."""
    P = 1.0 / (1.0 + np.exp(-E))
    theta = P.mean(axis=1) + lam * P.std(axis=1, ddof=1)
    M = np.tanh(np.exp(np.exp(log_t_mask) * (P - theta[:, None]))) if masked else 1.0
    W = l2n(M * P, axis=1)
    return W, W.sum(axis=0)


def pair_score(v, w, W, delta, log_t_attn, word_score="xdim"):
    """One image (R, d) and one caption's real tokens (L, d) -> score, steps 1-6.

    delta None: no dimension weights in step 1; word_score "cosine": g = cos(u, w) in step 5.
    """
    a = np.tanh((w if delta is None else w * delta[None, :]) @ v.T)  # (L, R)
    a = np.where(a > 0, a, 0.1 * a)
    a = l2n(a, axis=0)
    logits = np.exp(log_t_attn) * a
    alpha = np.exp(logits - logits.max(axis=1, keepdims=True))
    alpha = alpha / alpha.sum(axis=1, keepdims=True)
    u = l2n(alpha @ v, axis=1)
    if word_score == "cosine":
        g = (u * l2n(w, axis=1)).sum(axis=1)
    else:
        s = (u * w) @ W.T
        g = s.sum(axis=1) / (np.sqrt((s ** 2).sum(axis=1)) + 1e-8)
    return g.mean()


def xdim_scores(sim, img, cap, cap_lens, masked=True, weighted=True, word_score="xdim"):
    """(n_img, n_cap) float64 scores of `sim`'s parameters (E, lam, log_t_mask, log_t_attn; only
    log_t_attn for word_score "cosine"), pair by pair. masked=False: no sparse mask;
    weighted=False: no delta in step 1; word_score "cosine": step 5 is cos(u, w)."""
    as64 = lambda t: t.detach().double().cpu().numpy()
    W = delta = None
    if word_score != "cosine":
        W, delta = dependency_weights(as64(sim.E), as64(sim.lam), float(sim.log_t_mask.detach()), masked)
    out = np.zeros((img.shape[0], cap.shape[0]))
    for i in range(img.shape[0]):
        for c in range(cap.shape[0]):
            out[i, c] = pair_score(as64(img[i]), as64(cap[c, :cap_lens[c]]), W, delta if weighted else None,
                                   float(sim.log_t_attn.detach()), word_score)
    return out


def without_mask(sim, img, cap, cap_lens):
    """xdim_nomask's equations: W = row-l2n(P)."""
    return xdim_scores(sim, img, cap, cap_lens, masked=False)


def without_delta(sim, img, cap, cap_lens):
    """xdim_nodelta's equations: no dimension weights in step 1."""
    return xdim_scores(sim, img, cap, cap_lens, weighted=False)


def cosine_words(sim, img, cap, cap_lens):
    """cosine's equations: delta = 1 in step 1, word score cos(u, w) in step 5."""
    return xdim_scores(sim, img, cap, cap_lens, word_score="cosine")
