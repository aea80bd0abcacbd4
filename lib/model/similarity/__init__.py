"""Similarity functions: (images, captions) token embeddings -> (n_images, n_captions) pair scores.

The contract. A similarity is a `Similarity` (lib/model/similarity/base.py), an nn.Module built
as `cls(embed_size)`, with

- `score(img (b, R, d), cap (n, L, d), cap_lens (n,), img_lens (b,) or None, prepared)
  -> (b, n)`: one block of images against one run of captions; `cap[c, cap_lens[c]:]`
  and regions past `img_lens[i]` are padding;
- optionally `prepare() -> prepared`, computed once per call from the parameters
  (X-Dim's W and delta), and `prepare_captions(cap, cap_lens, prepared)`, computed once
  per caption run and handed to `score` for every image block of that run;
- optionally a class attribute `block_cost` (default 1): its working memory per
  (image, real token) row relative to the fast X-Dim kernel.

Calling the module scores all images against all captions through the one block
scheduler (lib/model/similarity/blocks.py), which training and evaluation share: a similarity
never handles memory. Adding one = one module plus one entry in SIMILARITIES below;
`--sim NAME` then picks it, checkpoints store the name, evaluation rebuilds it.

`xdim` is the fast X-Dim kernel, `reference` the same equations step by step
(lib/model/similarity/reference.py); the others change one equation each (docs/method.md).
"""
from lib.errors import XDimError
from lib.model.similarity.ablations import XDimFixedThreshold, XDimNoDelta, XDimNoMask
from lib.model.similarity.base import Similarity
from lib.model.similarity.cosine import CosineSimilarity
from lib.model.similarity.reference import ReferenceSimilarity
from lib.model.similarity.xdim import XDimSimilarity

DEFAULT_SIMILARITY = "xdim"

# name -> (class, the one equation it changes, for --help)
SIMILARITIES = {
    "xdim": (XDimSimilarity, "X-Dim: step 5 aggregates s = (u * w) W^T through the masked dependency W"),
    "reference": (ReferenceSimilarity, "xdim's equations step by step on padded tensors (slow; debugging)"),
    "cosine": (CosineSimilarity, "no dimension dependency: delta = 1 in step 1, word score cos(u, w) in step 5"),
    "xdim_nomask": (XDimNoMask, "no sparse mask: W = row-l2n(P), every dependency kept"),
    "xdim_fixed_threshold": (XDimFixedThreshold, "mask not learned: lam and t_mask frozen at their initial values"),
    "xdim_nodelta": (XDimNoDelta, "no dimension weights in step 1: a = tanh(w . v) (W still in step 5)"),
}

__all__ = ["DEFAULT_SIMILARITY", "SIMILARITIES", "Similarity", "build_similarity",
           "check_similarity_name", "similarity_help"]


def check_similarity_name(name, source="--sim"):
    """XDimError (one line, naming `source`) unless `name` is a registered similarity."""
    if name not in SIMILARITIES:
        raise XDimError(f"{source}: unknown similarity {name!r} (known: {', '.join(SIMILARITIES)})")


def build_similarity(name, embed_size):
    """The similarity registered as `name`, for embedding size `embed_size`."""
    check_similarity_name(name)
    return SIMILARITIES[name][0](embed_size)


def similarity_help():
    """A block of lines naming every similarity and the equation it changes, for --help."""
    width = max(map(len, SIMILARITIES))
    return "similarities (--sim NAME):\n" + "\n".join(
        f"  {name:<{width}}  {text}" for name, (_, text) in SIMILARITIES.items())
