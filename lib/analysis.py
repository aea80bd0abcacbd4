"""Looking inside an X-Dim model: what the dependency mask kept and which dimensions act together.

Pure numpy / torch statistics (the figures are drawn by lib/figures.py):
- `dependency_order(W)`: an order of the d dimensions in which groups of mutually
  dependent dimensions sit next to each other (average-linkage clustering);
- `dependencies_per_dimension(mask)`: for each dimension i, the number of
  dimensions j it draws on (mask entries M[i, j] > 0.5);
- concept statistics: for a word, each dimension's probability of taking part in
  the word's representation (`participation_probabilities`, defined there).
"""
import numpy as np

from lib.similarity.xdim import MASK_ON


# ---------------------------------------------------------------- dependency structure

def dependency_order(W):
    """An order of the dimensions that shows groups of mutually dependent dimensions as blocks.

    W (d, d), non-negative dependency weights (any array-like). The similarity of
    dimensions i and j is (|W[i, j]| + |W[j, i]|) / 2; dimensions are clustered
    bottom-up with average linkage (the two clusters whose members are, on average,
    most similar merge first) and the order is the leaf order of the resulting
    tree, each merged cluster laid out as its two parts one after the other. Every
    cluster of the tree is therefore a contiguous range of the order; a group whose
    internal similarities all exceed its similarities to the rest is one of them.
    Deterministic (ties go to the lower index). Returns (d,) int64, a permutation.

    The tree is built by the nearest-neighbour chain algorithm: O(d^2) time, a few
    numpy operations per merge.
    """
    weights = np.abs(np.asarray(W, dtype=np.float64))
    if weights.ndim != 2 or weights.shape[0] != weights.shape[1]:
        raise ValueError(f"W must be square, got shape {weights.shape}")
    d = weights.shape[0]
    similarity = (weights + weights.T) / 2
    np.fill_diagonal(similarity, -np.inf)
    sizes = np.ones(d)
    members = [[i] for i in range(d)]
    active = np.ones(d, dtype=bool)
    chain = []
    for _ in range(d - 1):
        while True:
            if not chain:
                chain.append(int(np.flatnonzero(active)[0]))
            top = chain[-1]
            row = np.where(active, similarity[top], -np.inf)
            row[top] = -np.inf
            nearest = int(np.argmax(row))
            # A tie with the previous link closes the chain, so it always ends.
            if len(chain) > 1 and row[chain[-2]] >= row[nearest]:
                break
            chain.append(nearest)
        top, previous = chain.pop(), chain.pop()
        keep, gone = min(top, previous), max(top, previous)
        merged = (sizes[top] * similarity[top] + sizes[previous] * similarity[previous]) / (
            sizes[top] + sizes[previous])
        similarity[keep], similarity[:, keep] = merged, merged
        similarity[keep, keep] = -np.inf
        members[keep] = members[previous] + members[top]
        sizes[keep] += sizes[gone]
        active[gone] = False
    return np.asarray(members[int(np.flatnonzero(active)[0])], dtype=np.int64)


def dependencies_per_dimension(mask):
    """mask (d, d) -> (d,) int64: for each dimension i, how many M[i, j] exceed 0.5."""
    return (np.asarray(mask) > MASK_ON).sum(axis=1)


# ---------------------------------------------------------------- concepts

def participation_probabilities(vectors, top_k):
    """Each dimension's probability of taking part in a word's representation.

    vectors (n, d): one word-region correspondence vector per occurrence of the
    word. Dimension j takes part in an occurrence when its value is among the
    `top_k` largest of that occurrence's vector (ties: the lower index first).
    Returns (d,) float64: the share of occurrences in which each dimension takes
    part (the values sum to top_k).
    """
    values = np.asarray(vectors, dtype=np.float64)
    n, d = values.shape
    if n == 0 or not 1 <= top_k <= d:
        raise ValueError(f"need occurrences and 1 <= top_k <= d, got {n} occurrences, top_k {top_k}, d {d}")
    top = np.argsort(-values, axis=1, kind="stable")[:, :top_k]
    return np.bincount(top.ravel(), minlength=d) / n


def rank_dimensions(probabilities):
    """(d,) probabilities -> (d,) int64 dimensions by decreasing probability (ties: lower index first)."""
    return np.argsort(-np.asarray(probabilities), kind="stable")


def shared_top_dimensions(top_sets):
    """top_sets: list of k collections of dimensions -> (k, k) int64: sizes of the pairwise intersections."""
    sets = [set(int(j) for j in dims) for dims in top_sets]
    return np.array([[len(a & b) for b in sets] for a in sets], dtype=np.int64)
