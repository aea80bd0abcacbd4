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
never handles memory. Adding one = one module plus one entry in SIMILARITIES below (a
SimilarityEntry: the class, its --help line, its traits and optionally a float64 reference);
`--sim NAME` then picks it, checkpoints store the name, evaluation rebuilds it, and the
registry's tests (tests/model/test_similarity.py) check it with no edit of theirs.

`xdim` is the fast X-Dim kernel, `reference` the same equations step by step
(lib/model/similarity/reference.py); the others change one equation each (docs/method.md).
"""
from typing import Callable, NamedTuple

from lib.errors import XDimError
from lib.model.similarity.ablations import XDimFixedThreshold, XDimNoDelta, XDimNoMask
from lib.model.similarity.base import Similarity
from lib.model.similarity.cosine import CosineSimilarity
from lib.model.similarity.reference import ReferenceSimilarity
from lib.model.similarity.transcription import cosine_words, without_delta, without_mask, xdim_scores
from lib.model.similarity.xdim import XDimSimilarity

DEFAULT_SIMILARITY = "xdim"


class SimilarityEntry(NamedTuple):
    """One --sim choice: its class and its traits, which --help, analyze.py and ablate.py read.

    A plain (cls, help) pair in SIMILARITIES is an entry with the default traits.
    """
    cls: type  # a Similarity, built as cls(embed_size)
    help: str  # the one equation it changes, for --help
    # Its scores follow X-Dim's equations as written, so analyze.py may draw them;
    # False for a variant that changes one (analyze.py refuses its checkpoints).
    xdim_equations: bool = False
    in_ablation: bool = True  # ablate.py trains it when --variants is not given
    # (sim, img, cap, cap_lens) -> (n_img, n_cap) float64 numpy scores written plainly from the
    # equation (lib/model/similarity/transcription.py); the registry's tests check the module with it.
    reference: Callable = None


SIMILARITIES = {
    "xdim": SimilarityEntry(
        XDimSimilarity, "X-Dim: step 5 aggregates s = (u * w) W^T through the masked dependency W",
        xdim_equations=True, reference=xdim_scores),
    # Computes xdim's scores (slowly): a debugging aid, not an ablation.
    "reference": SimilarityEntry(
        ReferenceSimilarity, "xdim's equations step by step on padded tensors (slow; debugging)",
        xdim_equations=True, in_ablation=False, reference=xdim_scores),
    "cosine": SimilarityEntry(
        CosineSimilarity, "no dimension dependency: delta = 1 in step 1, word score cos(u, w) in step 5",
        reference=cosine_words),
    "xdim_nomask": SimilarityEntry(XDimNoMask, "no sparse mask: W = row-l2n(P), every dependency kept",
                                   reference=without_mask),
    "xdim_fixed_threshold": SimilarityEntry(
        XDimFixedThreshold, "mask not learned: lam and t_mask frozen at their initial values",
        xdim_equations=True, reference=xdim_scores),
    "xdim_nodelta": SimilarityEntry(
        XDimNoDelta, "no dimension weights in step 1: a = tanh(w . v) (W still in step 5)",
        reference=without_delta),
}

__all__ = ["DEFAULT_SIMILARITY", "SIMILARITIES", "Similarity", "SimilarityEntry", "ablation_variants",
           "build_similarity", "check_similarity_name", "similarity_entry", "similarity_help",
           "xdim_equation_similarities"]


def check_similarity_name(name, source="--sim"):
    """XDimError (one line, naming `source`) unless `name` is a registered similarity."""
    if name not in SIMILARITIES:
        raise XDimError(f"{source}: unknown similarity {name!r} (known: {', '.join(SIMILARITIES)})")


def similarity_entry(name, source="--sim"):
    """The SimilarityEntry registered as `name`; XDimError (one line, naming `source`) when none is."""
    check_similarity_name(name, source)
    return SimilarityEntry(*SIMILARITIES[name])


def build_similarity(name, embed_size):
    """The similarity registered as `name`, for embedding size `embed_size`."""
    return similarity_entry(name).cls(embed_size)


def similarity_help():
    """A block of lines naming every similarity and the equation it changes, for --help."""
    width = max(map(len, SIMILARITIES))
    return "similarities (--sim NAME):\n" + "\n".join(
        f"  {name:<{width}}  {similarity_entry(name).help}" for name in SIMILARITIES)


def xdim_equation_similarities():
    """The names, in registry order, whose scores follow X-Dim's equations (analyze.py draws those)."""
    return [name for name in SIMILARITIES if similarity_entry(name).xdim_equations]


def ablation_variants():
    """The names, in registry order, that ablate.py trains by default."""
    return [name for name in SIMILARITIES if similarity_entry(name).in_ablation]
