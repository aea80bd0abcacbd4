"""Looking inside an X-Dim model: what the dependency mask kept and which dimensions act together.

Statistics (numpy / torch; every intermediate comes from lib/model/similarity/reference.py):
- `dependency_order(W)`: an order of the d dimensions in which groups of mutually
  dependent dimensions sit next to each other (scipy's average-linkage clustering);
- `dependencies_per_dimension(mask)`: for each dimension i, the number of
  dimensions j it draws on (mask entries M[i, j] > 0.5);
- `concept_statistics`: for a word, each dimension's probability of taking part in
  the word's representation over a split (`participation_probabilities`);
- `pair_analysis`: one image-caption pair's attention and word scores.
`write_report` draws them (lib/analysis/figures.py, which alone needs matplotlib) and writes
summary.json; it is what analyze.py runs. scipy and matplotlib are optional dependencies, for
analyze.py only: each is imported where it is used, with a one-line install hint when missing.
"""
import os
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from lib.analysis import attention, figures
from lib.data.precomp import CaptionDataset, ImageDataset, pad_tokens
from lib.errors import XDimError
from lib.formats.atomic import write_json
from lib.model.similarity import reference, similarity_entry, xdim_equation_similarities
from lib.model.similarity.xdim import MASK_ON

# ---------------------------------------------------------------- dependency structure

SCIPY_HINT = "scipy is not installed; analyze.py orders the dimensions with it: pip install scipy"


def require_scipy():
    """-> scipy.cluster.hierarchy; XDimError (one line, with the install command) without scipy."""
    try:
        from scipy.cluster import hierarchy
    except ImportError:
        raise XDimError(SCIPY_HINT) from None
    return hierarchy


def dependency_order(W):
    """An order of the dimensions that shows groups of mutually dependent dimensions as blocks.

    W (d, d), non-negative dependency weights (any array-like). The similarity of
    dimensions i and j is (|W[i, j]| + |W[j, i]|) / 2; dimensions are clustered
    bottom-up with average linkage (the two clusters whose members are, on average,
    most similar merge first; scipy.cluster.hierarchy.linkage on the distance
    max(similarity) - similarity, which merges in the same order) and the order is
    the leaf order of the resulting tree (scipy's leaves_list: each merged cluster
    laid out as its two parts one after the other). Every cluster of the tree is
    therefore a contiguous range of the order; a group whose internal similarities
    all exceed its similarities to the rest is one of them. Deterministic.
    Returns (d,) int64, a permutation. XDimError without scipy.
    """
    hierarchy = require_scipy()
    weights = np.abs(np.asarray(W, dtype=np.float64))
    if weights.ndim != 2 or weights.shape[0] != weights.shape[1]:
        raise ValueError(f"W must be square, got shape {weights.shape}")
    d = weights.shape[0]
    if d < 2:
        return np.arange(d, dtype=np.int64)
    # Pairs i < j in scipy's condensed (row by row, upper triangle) layout.
    similarity = ((weights + weights.T) / 2)[np.triu_indices(d, k=1)]
    tree = hierarchy.linkage(similarity.max() - similarity, method="average")
    return hierarchy.leaves_list(tree).astype(np.int64)


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


# ---------------------------------------------------------------- from a model

def check_xdim_equations(sim_name):
    """XDimError unless checkpoints of `sim_name` score by X-Dim's own equations (the registry's trait)."""
    if not similarity_entry(sim_name).xdim_equations:
        raise XDimError(f"this checkpoint's similarity is {sim_name!r}, whose equations differ from X-Dim's; "
                        f"analyze.py draws the X-Dim equations of {', '.join(xdim_equation_similarities())} "
                        "checkpoints")


def dependency_parts(sim):
    """The X-Dim similarity's dependency weights and their parts, as float64 numpy arrays.

    sim: an XDimSimilarity. Returns {P, theta, mask, W, delta} (see
    lib.model.similarity.reference.dependency_weights) plus lam (d,).
    """
    with torch.no_grad():
        parts = reference.dependency_weights(sim.E.double(), sim.lam.double(), sim.log_t_mask.double())
        return {**{name: value.cpu().numpy() for name, value in parts.items()},
                "lam": sim.lam.double().cpu().numpy()}


def _reference_weights(model):
    """(W (d, d), delta (d,)) of the model's similarity, from the reference equations."""
    sim = model.sim
    parts = reference.dependency_weights(sim.E, sim.lam, sim.log_t_mask)
    return parts["W"], parts["delta"]


def _pair_steps(model, split, image, token_ids, weights):
    """reference.xdim_steps of one image of a split against captions given as token id tensors (L_c,).

    weights: `_reference_weights(model)`.
    """
    captions, lengths = pad_tokens(token_ids)
    regions, _ = ImageDataset(split)[image]
    return reference.xdim_steps(model.encode_images(regions.unsqueeze(0)), model.encode_captions(captions, lengths),
                                lengths.to(model.device), *weights, model.sim.log_t_attn)


class Occurrence(NamedTuple):
    """One occurrence of a word: caption index in the split, position of its first
    WordPiece in the caption's token ids ([CLS] is position 0), number of WordPieces."""
    caption: int
    start: int
    pieces: int


def word_piece_ids(encoder, word):
    """The WordPiece ids of `word` (tuple); XDimError unless it is one word made of known pieces."""
    words = encoder.word_pieces(word)
    if len(words) != 1:
        raise XDimError(f"--words {word!r}: give single words (the tokenizer reads {len(words)} words)")
    if encoder.tokenizer.unk_token_id in words[0]:
        raise XDimError(f"--words {word!r}: not in the BERT vocabulary (it tokenizes to "
                        f"{encoder.tokenizer.unk_token})")
    return tuple(words[0])


def find_occurrences(encoder, captions, words, progress=True):
    """{word: [Occurrence]}: every whole-word occurrence of each word in `captions` (list of str).

    A caption's words are split as the caption tokenizer splits them (lower-cased,
    punctuation apart), so "dog" matches "Dog," but not "dogs". Occurrences cut off
    by the BERT's length limit are left out.
    """
    targets = {word_piece_ids(encoder, word): word for word in words}
    found = {word: [] for word in words}
    for index, caption in enumerate(tqdm(captions, desc="find words", disable=not progress)):
        position = 1
        for pieces in encoder.word_pieces(caption):
            word = targets.get(tuple(pieces))
            if word is not None and position + len(pieces) < encoder.max_len:
                found[word].append(Occurrence(index, position, len(pieces)))
            position += len(pieces)
    return found


def occurrence_vectors(model, split, encoder, occurrences, progress=True):
    """Word-region correspondence vectors of occurrences in their matching pairs: (n, d) float64 numpy.

    Each occurrence is scored against the image its caption describes; its vector is
    the correspondence u * w (lib.model.similarity.reference.xdim_steps) averaged over the
    word's WordPieces.
    """
    model.val_start()
    by_image = {}
    for number, occurrence in enumerate(occurrences):
        by_image.setdefault(occurrence.caption // split.captions_per_image, []).append(number)
    vectors = np.empty((len(occurrences), model.config.embed_size))
    captions_data = CaptionDataset(split, encoder)
    with torch.no_grad():
        weights = _reference_weights(model)
        for image, numbers in tqdm(sorted(by_image.items()), desc="correspondences", disable=not progress):
            captions = sorted({occurrences[n].caption for n in numbers})
            steps = _pair_steps(model, split, image, [captions_data[c][0] for c in captions], weights)
            correspondence = steps["correspondence"][0].double().cpu().numpy()  # (n, L, d)
            for n in numbers:
                caption, start, pieces = occurrences[n]
                vectors[n] = correspondence[captions.index(caption), start:start + pieces].mean(axis=0)
    return vectors


def occurrences_in_split(encoder, split, words, progress=True):
    """find_occurrences over a split's captions; XDimError when a word never occurs there."""
    found = find_occurrences(encoder, split.captions, words, progress)
    for word, occurrences in found.items():
        if not occurrences:
            raise XDimError(f"--words {word!r}: the word does not occur in {split.captions_path}")
    return found


def concept_statistics(model, split, encoder, found, top_k, progress=True):
    """{word: {"occurrences": n, "probabilities": (d,) float64}} over a split's matching pairs.

    found: {word: [Occurrence]} (`occurrences_in_split`). See `participation_probabilities`.
    """
    result = {}
    for word, occurrences in found.items():
        vectors = occurrence_vectors(model, split, encoder, occurrences, progress)
        result[word] = {"occurrences": len(occurrences),
                        "probabilities": participation_probabilities(vectors, top_k)}
    return result


def check_pair(split, image, caption):
    """XDimError unless image and caption are indices of the split's images and captions."""
    for name, index, count in (("image", image, split.n_images), ("caption", caption, split.n_captions)):
        if not 0 <= index < count:
            raise XDimError(f"--pair {image} {caption}: {name} {index} is out of range "
                            f"({split.captions_path} has {count} {name}s: 0 to {count - 1})")


def pair_analysis(model, split, encoder, image, caption):
    """One (image, caption) pair of a split, any two indices: its attention and word scores.

    Returns {"tokens" (L,) str, "attention" (L, R), "word_scores" (L,), "shares" (L,):
    each token's share of the sum of word scores (the pair score is their mean),
    "score"}. XDimError for an index out of range.
    """
    check_pair(split, image, caption)
    token_ids = CaptionDataset(split, encoder)[caption][0]
    model.val_start()
    with torch.no_grad():
        steps = _pair_steps(model, split, image, [token_ids], _reference_weights(model))
    word_scores = steps["word_scores"][0, 0].double().cpu().numpy()
    return {"tokens": encoder.tokenizer.convert_ids_to_tokens(token_ids.tolist()),
            "attention": steps["attention"][0, 0].double().cpu().numpy(),
            "word_scores": word_scores, "shares": word_scores / word_scores.sum(),
            "score": float(steps["scores"][0, 0])}


# ---------------------------------------------------------------- the report

def default_top_k(d):
    """5% of the dimensions, at least one."""
    return max(1, round(0.05 * d))


def _file_name(word):
    """A file-name-safe spelling of a word: letters and digits kept, any other character as uNNNN."""
    return "".join(c if c.isascii() and c.isalnum() else f"u{ord(c):04x}" for c in word)


def mask_report(sim, out):
    """Figures of W, the mask, dependencies per dimension and thresholds in `out`; -> summary["mask"] part.

    Returns (summary dict, figure file names).
    """
    parts = dependency_parts(sim)
    order = dependency_order(parts["W"])
    counts = dependencies_per_dimension(parts["mask"])
    statistics = sim.statistics()
    files = ["dependency_weights.png", "mask.png", "dependencies_per_dimension.png", "thresholds.png"]
    paths = [os.path.join(out, name) for name in files]
    figures.dependency_heatmap(parts["W"], order, paths[0])
    figures.mask_heatmap(parts["mask"], order, paths[1], statistics["mask_density"])
    figures.dependencies_histogram(counts, paths[2])
    figures.thresholds_figure(parts["theta"], parts["lam"], statistics["t_mask"], statistics["t_attn"], paths[3])
    summary = {**statistics,
               "dependencies_per_dimension": {"min": int(counts.min()), "median": float(np.median(counts)),
                                              "mean": float(counts.mean()), "max": int(counts.max()),
                                              "values": counts.tolist()},
               "theta": parts["theta"].tolist(), "lam": parts["lam"].tolist(),
               "dimension_order": order.tolist()}
    return summary, files


def concepts_report(model, split, encoder, found, top_k, out, progress=True):
    """Concept figures of the words of `found` (one each, plus the overlap of several words) in `out`.

    found: {word: [Occurrence]}. Returns (summary["concepts"], summary["concept_overlap"]
    or None, figure file names).
    """
    words = list(found)
    statistics = concept_statistics(model, split, encoder, found, top_k, progress)
    concepts, files, top_sets = {}, [], []
    for word, concept in statistics.items():
        probabilities = concept["probabilities"]
        top = rank_dimensions(probabilities)[:top_k]
        top_sets.append(top)
        concepts[word] = {"occurrences": concept["occurrences"],
                          "top_dimensions": [{"dimension": int(j), "probability": float(probabilities[j])}
                                             for j in top]}
        files.append(f"concept_{_file_name(word)}.png")
        figures.concept_profile(word, probabilities, concept["occurrences"], top_k, os.path.join(out, files[-1]))
    overlap = None
    if len(words) > 1:
        shared = shared_top_dimensions(top_sets)
        overlap = {"words": words, "shared": shared.tolist()}
        files.append("concept_overlap.png")
        figures.concept_overlap(words, shared, top_k, os.path.join(out, files[-1]))
    return concepts, overlap, files


def pair_report(model, split, encoder, image, caption, out, photo=None):
    """The attention figure of one pair in `out`, and with `photo` (the image's file) its most attended
    detector boxes drawn on it; -> (summary["pair"], figure file names)."""
    pair = pair_analysis(model, split, encoder, image, caption)
    name = f"pair_{image}_{caption}.png"
    text = split.captions[caption]
    title = f"image {image}, caption {caption}: {text if len(text) <= 70 else text[:67] + '...'}"
    figures.pair_attention(pair["tokens"], pair["attention"], pair["shares"], pair["score"], title,
                           os.path.join(out, name))
    summary = {"image": image, "caption": caption, "caption_text": text,
               "tokens": pair["tokens"], "score": pair["score"],
               "word_scores": pair["word_scores"].tolist(), "shares": pair["shares"].tolist()}
    if photo is None:
        return summary, [name]
    return summary, [name, attention.boxes_report(pair, pair["tokens"], split, image, caption, photo, out)]


def write_report(model, out, split=None, encoder=None, words=(), top_k=None, pair=None, progress=True,
                 photo=None):
    """Write the figures and `out`/summary.json for a model; -> the summary dict.

    Always: the mask and dependency figures. With a split (SplitFiles) and its
    CaptionTokenizer: concept statistics of `words` (top_k: default 5% of d) and the
    attention of `pair` = (image, caption) indices, when given, and with `photo` (that image's
    file) its most attended boxes on the photo.
    XDimError (one line) for bad input and when matplotlib or scipy is missing.
    """
    figures.require_matplotlib()
    require_scipy()
    check_xdim_equations(model.config.sim)
    d = model.config.embed_size
    top_k = default_top_k(d) if top_k is None else top_k
    if not 1 <= top_k <= d:
        raise XDimError(f"--top_k {top_k}: must be between 1 and the embedding size {d}")
    words = list(dict.fromkeys(words))
    if (words or pair is not None) and split is None:
        raise XDimError("--words and --pair need a split (--data_path, --data_name, --split)")
    if pair is not None:
        check_pair(split, *pair)
        if photo is not None:
            attention.read_boxes(split, pair[0])
    found = occurrences_in_split(encoder, split, words, progress) if words else {}
    os.makedirs(out, exist_ok=True)
    mask, files = mask_report(model.sim, out)
    summary = {"embed_size": d, "mask": mask}
    if words:
        concepts, overlap, concept_files = concepts_report(model, split, encoder, found, top_k, out, progress)
        summary.update({"top_k": top_k, "split": split.captions_path, "concepts": concepts})
        if overlap is not None:
            summary["concept_overlap"] = overlap
        files += concept_files
    if pair is not None:
        summary["pair"], names = pair_report(model, split, encoder, *pair, out, photo)
        files += names
    summary["figures"] = files
    write_json(os.path.join(out, "summary.json"), summary, indent=1)
    return summary
