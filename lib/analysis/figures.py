"""The figures of analyze.py, drawn with matplotlib (an optional dependency: pip install matplotlib).

Only this module imports matplotlib, and only when a figure is drawn. Figures are
built on matplotlib's object API with the Agg canvas, so drawing never touches
pyplot's global state or the user's chosen backend. Every function writes one PNG.
"""
import numpy as np

from lib.errors import XDimError
from lib.formats.atomic import atomic_file

MATPLOTLIB_HINT = "matplotlib is not installed; analyze.py draws its figures with it: pip install matplotlib"
DPI = 100
# Tick labels stay legible at the figures' size on a page (matplotlib's default is 10).
TICK_FONT = 9


def require_matplotlib():
    """-> (Figure, FigureCanvasAgg) classes; XDimError (one line, with the install command) without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise XDimError(MATPLOTLIB_HINT) from None
    return Figure, FigureCanvasAgg


def _figure(width, height):
    """A new matplotlib Figure with an Agg canvas."""
    Figure, FigureCanvasAgg = require_matplotlib()
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path):
    with atomic_file(path) as f:
        figure.savefig(f, format="png", dpi=DPI, bbox_inches="tight")


def _heatmap(axes, figure, values, cmap, vmin, vmax, label):
    image = axes.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest", aspect="auto")
    figure.colorbar(image, ax=axes, label=label)
    return image


def dependency_heatmap(W, order, path):
    """W (d, d) with rows and columns in `order` (d,): blocks are groups of mutually dependent dimensions."""
    figure = _figure(6.4, 5.4)
    axes = figure.add_subplot()
    _heatmap(axes, figure, np.asarray(W)[np.ix_(order, order)], "magma", 0.0, None, "W[i, j]")
    axes.set_title(f"Dependency weights W ({len(order)} dimensions, reordered)")
    axes.set_xlabel("dimension j it draws on (position in the order)")
    axes.set_ylabel("dimension i (position in the order)")
    _save(figure, path)


def mask_heatmap(mask, order, path, density):
    """The adaptive mask M (d, d) in the same `order` as the W figure; `density` = share of entries > 0.5."""
    figure = _figure(6.4, 5.4)
    axes = figure.add_subplot()
    _heatmap(axes, figure, np.asarray(mask)[np.ix_(order, order)], "Greys", 0.0, 1.0, "M[i, j]")
    axes.set_title(f"Adaptive mask M (density {density:.3f}: share of entries > 0.5)")
    axes.set_xlabel("dimension j (position in the order)")
    axes.set_ylabel("dimension i (position in the order)")
    _save(figure, path)


def dependencies_histogram(counts, path):
    """counts (d,): per dimension, the number of dimensions it depends on (mask > 0.5)."""
    counts = np.asarray(counts)
    figure = _figure(6.0, 3.6)
    axes = figure.add_subplot()
    axes.hist(counts, bins=np.arange(counts.max() + 2) - 0.5 if counts.max() < 60 else 40, color="tab:blue")
    axes.set_title(f"Dimensions each dimension depends on (median {np.median(counts):g}, "
                   f"of {len(counts)})")
    axes.set_xlabel("number of j with M[i, j] > 0.5")
    axes.set_ylabel("dimensions i")
    _save(figure, path)


def thresholds_figure(theta, lam, t_mask, t_attn, path):
    """Histograms of the row thresholds theta (d,) and threshold scales lambda (d,); temperatures in the title."""
    figure = _figure(8.0, 3.4)
    left, right = figure.subplots(1, 2)
    left.hist(np.asarray(theta), bins=30, color="tab:orange")
    left.set_xlabel("theta_i = mean_j P[i, j] + lambda_i * std_j P[i, j]")
    left.set_ylabel("dimensions")
    right.hist(np.asarray(lam), bins=30, color="tab:green")
    right.set_xlabel("lambda_i")
    figure.suptitle(f"Mask thresholds; mask temperature {t_mask:.3g}, attention temperature {t_attn:.3g}")
    _save(figure, path)


def concept_profile(word, probabilities, n_occurrences, top_k, path, most=50):
    """One word's participation probabilities (d,): all dimensions sorted (left, the top_k shaded),
    and by index the dimensions that ever take part (right, at least top_k, at most `most`),
    the top_k of them highlighted."""
    probabilities = np.asarray(probabilities)
    ranked = np.argsort(-probabilities, kind="stable")
    shown = min(max(top_k, int((probabilities > 0).sum())), most, len(ranked))
    figure = _figure(11.0, 3.8)
    whole, detail = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.6]})
    whole.plot(np.arange(1, len(ranked) + 1), probabilities[ranked], color="tab:blue")
    whole.axvspan(0.5, top_k + 0.5, color="tab:orange", alpha=0.25, label=f"top {top_k}")
    whole.legend(loc="upper right", fontsize=TICK_FONT)
    whole.set_xlabel("dimensions, by decreasing probability")
    whole.set_ylabel("probability of taking part")
    whole.set_ylim(0, 1.02)
    colours = ["tab:orange" if rank < top_k else "tab:blue" for rank in range(shown)]
    detail.bar(np.arange(shown), probabilities[ranked[:shown]], color=colours)
    detail.set_xticks(np.arange(shown), [str(j) for j in ranked[:shown]], fontsize=TICK_FONT,
                      rotation=90 if shown > 20 else 0)
    detail.tick_params(axis="y", labelsize=TICK_FONT)
    whole.tick_params(labelsize=TICK_FONT)
    detail.set_xlabel(f"the {shown} dimensions that take part most (index), the top {top_k} in orange")
    detail.set_ylim(0, 1.02)
    figure.suptitle(f"'{word}': {n_occurrences} occurrences, a dimension takes part when it is "
                    f"in the top {top_k} of the word-region correspondence")
    _save(figure, path)


def concept_overlap(words, shared, top_k, path):
    """shared (k, k): for each pair of words, how many of their top_k dimensions they share."""
    n = len(words)
    figure = _figure(1.2 + 0.6 * n, 1.0 + 0.5 * n)
    axes = figure.add_subplot()
    axes.imshow(np.asarray(shared), cmap="Blues", vmin=0, vmax=top_k)
    for i in range(n):
        for j in range(n):
            value = int(shared[i][j])
            axes.text(j, i, str(value), ha="center", va="center", fontsize=8,
                      color="white" if value > top_k / 2 else "black")
    axes.set_xticks(range(n), words, rotation=45, ha="right")
    axes.set_yticks(range(n), words)
    axes.set_title(f"Shared top-{top_k} dimensions")
    _save(figure, path)


def pair_attention(tokens, attention, shares, score, title, path):
    """tokens (L,) strings, attention (L, R) over regions, shares (L,) of the pair's score."""
    attention = np.asarray(attention)
    length, regions = attention.shape
    figure = _figure(9.0, 1.4 + 0.28 * length)
    heat, bars = figure.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 1]})
    image = heat.imshow(attention, cmap="viridis", vmin=0.0, interpolation="nearest", aspect="auto")
    figure.colorbar(image, ax=heat, label="attention")
    heat.set_yticks(range(length), tokens, fontsize=8)
    heat.set_xlabel(f"image region (of {regions})")
    heat.set_title("Attention of each word over the regions")
    bars.barh(np.arange(length), shares, color=["tab:blue" if s >= 0 else "tab:red" for s in shares])
    bars.axvline(0, color="black", linewidth=0.5)
    bars.set_xlabel("share of the score")
    bars.set_title(f"score {score:.4f}")
    figure.suptitle(title)
    _save(figure, path)


def _word_panels(rgb, tokens, score, title):
    """A figure with the photo and one panel per token (4 per row) -> (figure, [photo axes, token axes...])."""
    columns = 4
    rows = -(-(len(tokens) + 1) // columns)
    height, width = rgb.shape[:2]
    panel = 2.6
    figure = _figure(columns * panel, rows * panel * max(0.4, min(1.5, height / width)) + 0.6)
    axes = list(np.asarray(figure.subplots(rows, columns, squeeze=False)).ravel())
    for ax in axes:
        ax.set_axis_off()
    axes[0].imshow(rgb)
    axes[0].set_title(f"score {score:.4f}", fontsize=9)
    figure.suptitle(title, fontsize=10)
    return figure, axes[1:len(tokens) + 1]


def photo_attention(rgb, tokens, maps, shares, score, title, path):
    """Each token's attention as a heat map over the photo.

    rgb (H, W, 3) uint8; maps: one (H, W) array per token (lib.analysis.attention.cell_heat);
    shares (L,): each token's share of the pair's score. One colour scale for all tokens.
    """
    figure, panels = _word_panels(rgb, tokens, score, title)
    top = max(float(np.max(heat)) for heat in maps)
    for ax, token, heat, share in zip(panels, tokens, maps, shares):
        ax.imshow(rgb)
        image = ax.imshow(heat, cmap="inferno", vmin=0.0, vmax=top, alpha=0.6, interpolation="nearest")
        ax.set_title(f"{token}  {100 * share:.1f}%", fontsize=9)
    figure.colorbar(image, ax=panels, shrink=0.5, label="attention (each word's sums to 1)")
    _save(figure, path)


def photo_boxes(rgb, tokens, chosen, shares, score, title, path):
    """Each token's most attended detector boxes on the photo.

    chosen: per token, a list of (box (4,) x1 y1 x2 y2 in pixels, attention weight), most attended first;
    the line width grows with the weight and each box is labelled with it.
    """
    from matplotlib.patches import Rectangle
    figure, panels = _word_panels(rgb, tokens, score, title)
    for ax, token, boxes, share in zip(panels, tokens, chosen, shares):
        ax.imshow(rgb)
        for box, weight in boxes:
            x1, y1, x2, y2 = (float(v) for v in box)
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="yellow",
                                   linewidth=0.5 + 4 * float(weight)))
            ax.text(x1, y1, f"{float(weight):.2f}", color="black", backgroundcolor="yellow", fontsize=6,
                    va="bottom")
        ax.set_title(f"{token}  {100 * share:.1f}%", fontsize=9)
    _save(figure, path)
