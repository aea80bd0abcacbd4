"""Paired comparison of two score matrices: each recall, their difference and its bootstrap interval.

The resampling unit is the image: a resample draws images with replacement and keeps, for each
drawn image, its image-to-text query and its captions' text-to-image queries. Every recall (and
so rSum) is a mean over images of a per-image score (`per_image_scores`), so one resample gives
all seven differences at once, and the 5 captions of an image, which share that image, are not
counted as independent. Both models are resampled with the same images (paired), so what the
interval measures is how much the difference depends on which images happened to be in the
split; it says nothing about the seed (see ablate.py --seeds for that).

scipy (>= 1.15) is needed only here: `pip install scipy`.
"""
import numpy as np

from lib.errors import XDimError
from lib.evaluation.metrics import check_sims, fold_slices, i2t_ranks, t2i_ranks

RECALL_KS = (1, 5, 10)
COMPARED_KEYS = [f"{direction}_r{k}" for direction in ("i2t", "t2i") for k in RECALL_KS] + ["rsum"]


def per_image_scores(sims, captions_per_image):
    """Each image's share of every compared metric -> (n_img, 7) float64, columns COMPARED_KEYS.

    Column i2t_rK is 100 * [image i's best true caption ranks < K]; t2i_rK is 100 * the fraction
    of image i's captions whose image ranks < K; rsum is the row sum. The column means are
    exactly the recalls and rSum of lib.evaluation.metrics.evaluate_sims(sims).
    """
    check_sims(sims, captions_per_image)
    image_ranks = i2t_ranks(sims, captions_per_image)
    caption_ranks = t2i_ranks(sims, captions_per_image).reshape(-1, captions_per_image)
    columns = [image_ranks < k for k in RECALL_KS]
    columns += [(caption_ranks < k).mean(axis=1) for k in RECALL_KS]
    scores = 100.0 * np.stack(columns, axis=1).astype(np.float64)
    return np.concatenate([scores, scores.sum(axis=1, keepdims=True)], axis=1)


def per_image_fold_scores(sims, captions_per_image, n_folds=5, fold_images=1000):
    """per_image_scores of each diagonal fold block, stacked -> (n_folds * fold_images, 7).

    The folds are equally large, so the column means are the 5-fold means of
    metrics.evaluate_folds (the COCO 1K figures).
    """
    blocks = fold_slices(n_folds, fold_images, captions_per_image)
    return np.concatenate([per_image_scores(sims[rows, cols], captions_per_image) for rows, cols in blocks])


def check_scipy():
    """scipy.stats, or XDimError with the install hint (scipy is needed only for the intervals)."""
    try:
        from scipy import stats
    except ImportError:
        raise XDimError("the paired bootstrap needs scipy (>= 1.15): pip install scipy") from None
    return stats


# Fewer resamples leave the 2.5% tail of a 95% percentile interval without a single resample,
# so its bounds would be the extreme resamples (with 1, the point itself), not an interval.
MIN_RESAMPLES = 40


def check_resamples(option, n_resamples):
    """XDimError naming `option` unless `n_resamples` is enough for a 95% percentile interval."""
    if n_resamples < MIN_RESAMPLES:
        raise XDimError(f"{option} {n_resamples}: must be at least {MIN_RESAMPLES} for a 95% interval "
                        f"(the default, 10000, gives stable bounds)")


def _mean_difference(a, b, axis):
    return np.mean(b, axis=axis) - np.mean(a, axis=axis)


def paired_bootstrap(scores_a, scores_b, n_resamples=10000, confidence=0.95, seed=0):
    """Difference B - A of the column means and its percentile bootstrap interval.

    scores_a, scores_b: (n_units, m) per-unit scores of the same units (rows), e.g.
    per_image_scores of two models on one split, or their means over seeds.
    -> dict {'a': (m,), 'b': (m,), 'diff': (m,), 'low': (m,), 'high': (m,)} float64 arrays.
    """
    if scores_a.shape != scores_b.shape:
        raise XDimError(f"cannot pair per-image scores of shapes {scores_a.shape} and {scores_b.shape}: "
                        "the two score matrices must come from the same split")
    stats = check_scipy()
    result = stats.bootstrap((scores_a, scores_b), _mean_difference, n_resamples=n_resamples,
                             batch=max(1, 2_000_000 // (scores_a.size or 1)), vectorized=True,
                             paired=True, axis=0, confidence_level=confidence, method="percentile",
                             rng=np.random.default_rng(seed))
    return {"a": scores_a.mean(axis=0), "b": scores_b.mean(axis=0),
            "diff": _mean_difference(scores_a, scores_b, 0),
            "low": np.asarray(result.confidence_interval.low, dtype=np.float64),
            "high": np.asarray(result.confidence_interval.high, dtype=np.float64)}


def comparison_dict(bootstrap):
    """paired_bootstrap's arrays -> {metric key: {'a', 'b', 'diff', 'ci_low', 'ci_high'}} of floats."""
    fields = {"a": "a", "b": "b", "diff": "diff", "ci_low": "low", "ci_high": "high"}
    return {key: {name: float(bootstrap[source][column]) for name, source in fields.items()}
            for column, key in enumerate(COMPARED_KEYS)}


def compare_sims(sims_a, sims_b, captions_per_image, fold5=False, fold_images=1000, n_resamples=10000,
                 confidence=0.95, seed=0):
    """Compare two score matrices (n_img, n_cap) of one split.

    -> {'all': comparison_dict} plus, with fold5, {'fold_mean': comparison_dict}
    (the COCO 1K figures; images resampled within the 5 folds taken together).
    """
    if sims_a.shape != sims_b.shape:
        raise XDimError(f"score matrices of shapes {tuple(sims_a.shape)} and {tuple(sims_b.shape)} "
                        "cannot be compared: both must come from the same split")
    protocols = {"all": lambda sims: per_image_scores(sims, captions_per_image)}
    if fold5:
        protocols["fold_mean"] = lambda sims: per_image_fold_scores(sims, captions_per_image, 5, fold_images)
    return {name: comparison_dict(paired_bootstrap(scores(sims_a), scores(sims_b), n_resamples,
                                                   confidence, seed))
            for name, scores in protocols.items()}


def comparison_table(comparison, label_a, label_b, confidence=0.95):
    """One line per metric: A, B, B - A and the interval of B - A. comparison: comparison_dict."""
    percent = f"{100 * confidence:g}% interval"
    width = max(len("metric"), *(len(key) for key in comparison))
    head = f"{'metric':{width}} | {'A':>7} | {'B':>7} | {'B - A':>7} | {percent:^17}"
    lines = [f"A: {label_a}", f"B: {label_b}", head, "-" * len(head)]
    for key, row in comparison.items():
        lines.append(f"{key:{width}} | {row['a']:7.2f} | {row['b']:7.2f} | {row['diff']:+7.2f} |"
                     f" [{row['ci_low']:+7.2f}, {row['ci_high']:+7.2f}]")
    return "\n".join(line.rstrip() for line in lines)
