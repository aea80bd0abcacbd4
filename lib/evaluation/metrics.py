"""Retrieval metrics of a score matrix: ranks, Recall@K, medr, meanr, rSum, the COCO folds, tables.

Pure numpy. `sims` is always (n_images, n_captions) with captions cpi*i .. cpi*i+cpi-1
describing image i (cpi = captions per image, 5 or 1). Ranks are 0-based and ties
with a wrong item count against the model.
"""
import numpy as np

from lib.errors import XDimError

METRIC_KEYS = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum",
               "i2t_medr", "i2t_meanr", "t2i_medr", "t2i_meanr"]


def check_sims(sims, captions_per_image):
    """Validate a score matrix (n_img, cpi * n_img)."""
    if sims.ndim != 2 or sims.shape[1] != captions_per_image * sims.shape[0] or sims.shape[0] == 0:
        raise XDimError(f"score matrix of shape {tuple(sims.shape)} does not hold "
                        f"{captions_per_image} captions per image")
    if not np.isfinite(sims).all():
        raise XDimError("score matrix holds NaN or infinite values")


def i2t_ranks(sims, captions_per_image=5, rows_per_chunk=512):
    """Image-to-text ranks (n_img,) int64, 0-based.

    Rank of image i = number of wrong captions scoring >= its best true caption
    (captions cpi*i .. cpi*i+cpi-1): ties with wrong captions count against it.
    """
    n_img = sims.shape[0]
    ranks = np.empty(n_img, dtype=np.int64)
    for r0 in range(0, n_img, rows_per_chunk):
        rows = np.arange(r0, min(r0 + rows_per_chunk, n_img))
        true_cols = rows[:, None] * captions_per_image + np.arange(captions_per_image)
        true_scores = sims[rows[:, None], true_cols]
        best = true_scores.max(axis=1)
        at_least = (sims[rows] >= best[:, None]).sum(axis=1)
        ranks[rows] = at_least - (true_scores >= best[:, None]).sum(axis=1)
    return ranks


def t2i_ranks(sims, captions_per_image=5, cols_per_chunk=4096):
    """Text-to-image ranks (n_cap,) int64, 0-based.

    Rank of caption c = number of other images scoring >= its image c // cpi.
    """
    n_cap = sims.shape[1]
    ranks = np.empty(n_cap, dtype=np.int64)
    for c0 in range(0, n_cap, cols_per_chunk):
        cols = np.arange(c0, min(c0 + cols_per_chunk, n_cap))
        block = sims[:, cols]
        true = block[cols // captions_per_image, np.arange(len(cols))]
        ranks[cols] = (block >= true[None, :]).sum(axis=0) - 1
    return ranks


def recall_metrics(ranks):
    """-> (R@1, R@5, R@10 in percent, medr, meanr) for 0-based ranks."""
    recalls = [100.0 * float(np.mean(ranks < k)) for k in (1, 5, 10)]
    medr = float(np.floor(np.median(ranks)) + 1)
    meanr = float(np.mean(ranks) + 1)
    return recalls + [medr, meanr]


def evaluate_sims(sims, captions_per_image=5):
    """Metrics of one score matrix (n_img, cpi * n_img).

    -> (metrics dict with METRIC_KEYS, ranks dict {'i2t': (n_img,), 't2i': (n_cap,)}).
    """
    sims = np.asarray(sims)
    check_sims(sims, captions_per_image)
    ranks = {"i2t": i2t_ranks(sims, captions_per_image), "t2i": t2i_ranks(sims, captions_per_image)}
    metrics = {}
    for direction in ("i2t", "t2i"):
        r1, r5, r10, medr, meanr = recall_metrics(ranks[direction])
        metrics.update({f"{direction}_r1": r1, f"{direction}_r5": r5, f"{direction}_r10": r10,
                        f"{direction}_medr": medr, f"{direction}_meanr": meanr})
    metrics["rsum"] = sum(metrics[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    return {key: metrics[key] for key in METRIC_KEYS}, ranks


def fold_slices(n_folds, fold_images, captions_per_image=5):
    """-> list of (image slice, caption slice): fold k holds images k*fold_images ..
    (k+1)*fold_images - 1 and their cpi * fold_images captions."""
    fold_captions = fold_images * captions_per_image
    return [(slice(k * fold_images, (k + 1) * fold_images),
             slice(k * fold_captions, (k + 1) * fold_captions)) for k in range(n_folds)]


def mean_metrics(metric_dicts):
    """Average every metric (rSum included) over several dicts."""
    return {key: float(np.mean([m[key] for m in metric_dicts])) for key in metric_dicts[0]}


def std_metrics(metric_dicts):
    """Sample standard deviation (ddof 1; 0 for a single dict) of every metric over several dicts."""
    if len(metric_dicts) == 1:
        return {key: 0.0 for key in metric_dicts[0]}
    return {key: float(np.std([m[key] for m in metric_dicts], ddof=1)) for key in metric_dicts[0]}


def check_fold_count(n_images, n_folds=5, fold_images=1000):
    """XDimError unless `n_images` fill `n_folds` folds of `fold_images` images."""
    if n_images < n_folds * fold_images:
        raise XDimError(f"--fold5: {n_folds} folds of {fold_images} images need at least "
                        f"{n_folds * fold_images} images, the scores hold {n_images}; "
                        f"lower --fold_images (at most {n_images // n_folds}) or leave out the folds (--no-fold5)")


def evaluate_folds(sims, captions_per_image=5, n_folds=5, fold_images=1000):
    """COCO 1K protocol: metrics of each diagonal fold block and their mean.

    -> (list of n_folds metrics dicts, mean metrics dict).
    """
    check_fold_count(sims.shape[0], n_folds, fold_images)
    folds = [evaluate_sims(sims[rows, cols], captions_per_image)[0]
             for rows, cols in fold_slices(n_folds, fold_images, captions_per_image)]
    return folds, mean_metrics(folds)


def run_protocol(sims, captions_per_image=5, fold5=False, fold_images=1000):
    """What the scripts report: {'all': metrics of the whole matrix} and, with
    fold5, also {'folds': [5 dicts], 'fold_mean': dict, 'fold_std': dict (std_metrics of the folds)}."""
    results = {"all": evaluate_sims(sims, captions_per_image)[0]}
    if fold5:
        results["folds"], results["fold_mean"] = evaluate_folds(sims, captions_per_image, 5, fold_images)
        results["fold_std"] = std_metrics(results["folds"])
    return results


def rounded(results, digits=3):
    """A copy of nested results (dicts, lists) with every float rounded to `digits` decimals.

    Three decimals drop float noise such as 90.60000000000001 and keep every recall of
    the standard splits exact: they move in steps of 100 / queries, 0.004 at worst
    (COCO 5K's 25000 captions).
    """
    if isinstance(results, dict):
        return {key: rounded(value, digits) for key, value in results.items()}
    if isinstance(results, list):
        return [rounded(value, digits) for value in results]
    return round(results, digits) if isinstance(results, float) else results


def format_table(rows):
    """Paper-style table. rows: list of (label, metrics dict). -> str."""
    label_width = max([len(label) for label, _ in rows] + [10])
    head1 = (f"{'':{label_width}} | {'image-to-text':^20} | {'text-to-image':^20} | {'':>6} |"
             f" {'i2t':^12} | {'t2i':^12}")
    head2 = (f"{'':{label_width}} | {'R@1':>6} {'R@5':>6} {'R@10':>6} | {'R@1':>6} {'R@5':>6} {'R@10':>6} |"
             f" {'rSum':>6} | {'medr':>5} {'meanr':>6} | {'medr':>5} {'meanr':>6}")
    lines = [head1, head2, "-" * len(head2)]
    for label, m in rows:
        lines.append(
            f"{label:{label_width}} | {m['i2t_r1']:6.1f} {m['i2t_r5']:6.1f} {m['i2t_r10']:6.1f} |"
            f" {m['t2i_r1']:6.1f} {m['t2i_r5']:6.1f} {m['t2i_r10']:6.1f} | {m['rsum']:6.1f} |"
            f" {m['i2t_medr']:5.1f} {m['i2t_meanr']:6.1f} | {m['t2i_medr']:5.1f} {m['t2i_meanr']:6.1f}")
    return "\n".join(lines)


def results_table(results, name):
    """Table rows for run_protocol's results: each fold, their mean and standard deviation, the whole matrix."""
    rows = []
    if "folds" in results:
        rows += [(f"{name} fold {k}", m) for k, m in enumerate(results["folds"])]
        rows.append((f"{name} 5-fold mean", results["fold_mean"]))
        rows.append((f"{name} 5-fold std", std_metrics(results["folds"])))
    rows.append((f"{name} all", results["all"]))
    return format_table(rows)
