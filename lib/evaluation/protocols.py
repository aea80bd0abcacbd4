"""COCO 5K under the corrected benchmarks: CxC, ECCV Caption and PMRP, through `eccv_caption`.

The `eccv_caption` package (NAVER AI) holds the ground truth of COCO, CxC and ECCV Caption
for the Karpathy 5K test split and computes their metrics from ranked lists of COCO ids:
{image id: caption ids, best first} and {caption id: image ids, best first}. This module
1. reads the split's image ids (`S_ids.txt`) and checks that the split is that split in that
   order (`check_split_ids`): image i's five captions, taken from the package's caption-id
   list, must be image i's in the package's COCO ground truth;
2. turns the (5000, 25000) score matrix into ranked lists (`ranked_lists`), a block of
   queries at a time, each query's list only as long as its metrics read;
3. asks the package for each benchmark (`benchmark_results`) and checks that its COCO 1K
   and 5K R@K equal lib.evaluation.metrics' on the same scores (`cross_check`).

Ties are ordered as lib.evaluation.metrics counts them: at equal score a query's COCO
ground-truth items come after the others (then lower index first), so the package's
COCO R@K equals ours exactly, ties included. Every value is in percent.

eccv_caption is optional (`pip install eccv_caption`) and imported only here.
"""
import contextlib
import io
import os
import warnings
from importlib.metadata import version

import numpy as np
from tqdm import tqdm

from lib.data.precomp import split_file
from lib.errors import XDimError

PROTOCOLS = ("coco", "cxc", "eccv", "pmrp")
INSTALL_HINT = "pip install eccv_caption"
PM_FILES = ("pm_image_to_caption.json", "pm_caption_to_image.json")
N_IMAGES, CAPTIONS_PER_IMAGE = 5000, 5
FOLD_IMAGES = 1000
RECALL_KS = (1, 5, 10)
ROW_LABELS = {"coco_1k": "COCO 1K (5-fold mean)", "coco_5k": "COCO 5K", "cxc": "CxC",
              "eccv": "ECCV Caption", "pmrp": "PMRP"}
COLUMNS = (("r1", "R@1"), ("r5", "R@5"), ("r10", "R@10"), ("rprecision", "R-P"), ("map_at_r", "mAP@R"))


# ---------------------------------------------------------------- options and ids

def parse_protocols(text, pm_dir=None, fold_images=FOLD_IMAGES):
    """'coco,cxc,eccv' -> ('coco', 'cxc', 'eccv') in PROTOCOLS order; XDimError for an unknown
    name, pmrp without --pm_dir holding both PM files, --pm_dir without pmrp, or COCO 1K
    folds other than 1000 images (the package's 1K folds)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PROTOCOLS]
    if unknown:
        raise XDimError(f"--protocols {text}: unknown {', '.join(unknown)}; choose from {','.join(PROTOCOLS)}")
    if ("pmrp" in names) != bool(pm_dir):
        raise XDimError("--protocols pmrp and --pm_dir go together: --pm_dir names the folder holding "
                        f"{' and '.join(PM_FILES)} (see docs/evaluation.md)")
    if not names:
        raise XDimError(f"--protocols needs one or more of {','.join(PROTOCOLS)}")
    for name in PM_FILES if pm_dir else ():
        if not os.path.isfile(os.path.join(pm_dir, name)):
            raise XDimError(f"--pm_dir {pm_dir}: no {name} there (the Plausible Match files of eccv_caption)")
    if fold_images != FOLD_IMAGES:
        raise XDimError(f"--protocols: COCO 1K folds are {FOLD_IMAGES} images; leave --fold_images at {FOLD_IMAGES}")
    return tuple(name for name in PROTOCOLS if name in names)


def needs_package(protocols):
    """True when a protocol beyond COCO (whose rows are our own metrics) is asked for."""
    return any(name != "coco" for name in protocols)


def load_package(pm_dir=None):
    """An eccv_caption.Metrics holding every ground truth (and PM's from `pm_dir`), or XDimError
    with the install hint."""
    try:
        with warnings.catch_warnings():  # it warns when the optional ujson is missing
            warnings.simplefilter("ignore")
            from eccv_caption import Metrics
    except ImportError:
        raise XDimError(f"--protocols cxc, eccv and pmrp need the eccv_caption package: {INSTALL_HINT}") from None
    try:
        return Metrics(extra_file_dir=pm_dir)
    except (ValueError, AttributeError) as err:
        raise XDimError(f"--pm_dir {pm_dir}: not the Plausible Match JSON files ({err})") from None


def check_split_shape(n_images, n_captions):
    """XDimError unless the scores are COCO 5K's (5000 images x 25000 captions)."""
    if (n_images, n_captions) != (N_IMAGES, N_IMAGES * CAPTIONS_PER_IMAGE):
        raise XDimError(f"--protocols: the benchmarks cover COCO's 5K test split (coco_precomp testall, "
                        f"{N_IMAGES} images x {N_IMAGES * CAPTIONS_PER_IMAGE} captions); the scores hold "
                        f"{n_images} x {n_captions}")


def read_image_ids(path, n_images, captions_per_image=CAPTIONS_PER_IMAGE):
    """COCO image ids (n_images,) int64 from a split's ids file: one line per image
    (convert_features.py) or one per caption, each image's id on its captions' lines (the
    precomp release's testall_ids.txt). XDimError naming the file and line otherwise."""
    if not os.path.isfile(path):
        raise XDimError(f"{path}: no such file; --protocols reads the split's COCO image ids from it "
                        f"(the precomp release's testall_ids.txt)")
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f.read().splitlines()]
    try:
        ids = np.array([int(line) for line in lines], dtype=np.int64)
    except ValueError:
        number = next(k for k, line in enumerate(lines) if not line.isdigit()) + 1
        raise XDimError(f"{path}: line {number} is {lines[number - 1]!r}, not a COCO image id") from None
    if len(ids) == n_images * captions_per_image:
        per_caption = ids.reshape(n_images, captions_per_image)
        differs = np.flatnonzero((per_caption != per_caption[:, :1]).any(axis=1))
        if len(differs):
            first = differs[0] * captions_per_image + 1
            raise XDimError(f"{path}: lines {first}-{first + captions_per_image - 1} name different images; "
                            f"with one line per caption each image's {captions_per_image} lines hold its id")
        return per_caption[:, 0].copy()
    if len(ids) != n_images:
        raise XDimError(f"{path}: {len(ids)} ids for the {n_images} images of the split "
                        f"(one line per image or per caption)")
    return ids


def caption_images(package):
    """The image of each caption of the package's caption-id list (its COCO ground truth),
    one row per group of five: (5000, 5) int64. Column 0 is the Karpathy 5K test order."""
    t2i = package.coco_gts["t2i"]
    images = np.array([t2i[int(cid)][0] for cid in package.coco_ids], dtype=np.int64)
    return images.reshape(-1, CAPTIONS_PER_IMAGE)


def package_image_order(package):
    """The Karpathy 5K test images in the package's caption order: (5000,) int64."""
    return caption_images(package)[:, 0].copy()


def check_split_ids(image_ids, package, source):
    """XDimError with one line saying what differs unless, for every i, image i of the split
    is the image of the package's captions 5i .. 5i+4 (`source` names the ids file)."""
    of_captions = caption_images(package)
    expected = of_captions[:, 0]
    if len(image_ids) != len(expected):
        raise XDimError(f"{source}: {len(image_ids)} image ids; COCO's 5K test split has {len(expected)}")
    foreign = np.flatnonzero(~np.isin(image_ids, expected))
    if len(foreign):
        raise XDimError(f"{source}: {len(foreign)} of the {len(image_ids)} images are not COCO 5K test images "
                        f"(first: image {foreign[0]}, id {image_ids[foreign[0]]}); --protocols needs "
                        f"coco_precomp testall")
    values, counts = np.unique(image_ids, return_counts=True)
    if (counts > 1).any():
        raise XDimError(f"{source}: image id {values[counts > 1][0]} appears {counts[counts > 1][0]} times")
    moved = np.flatnonzero((of_captions != image_ids[:, None]).any(axis=1))
    if len(moved):
        raise XDimError(f"{source}: the 5K test images in another order ({len(moved)} of {len(image_ids)} "
                        f"moved; image {moved[0]} is id {image_ids[moved[0]]}, the Karpathy order has "
                        f"{expected[moved[0]]}): the scores must follow the Karpathy 5K order")


# ---------------------------------------------------------------- ranked lists

def top_items(block, lengths, first_positive, n_positive):
    """The best items of each query of a block, best first.

    block (b, n) scores of b queries over n items; lengths (b,): how many items each list
    holds; query r's COCO ground truth is items first_positive[r] .. + n_positive - 1, placed
    after the other items of equal score (then lower index first). np.partition finds each
    query's k-th best score (k: the block's longest list); only the items at or above it are
    sorted, all of the block's in one lexsort. -> b arrays of item indices (int64).
    """
    b, n = block.shape
    k = min(int(lengths.max()), n)
    threshold = np.partition(block, n - k, axis=1)[:, n - k]
    rows, cols = np.nonzero(block >= threshold[:, None])
    positive = (cols >= first_positive[rows]) & (cols < first_positive[rows] + n_positive)
    order = np.lexsort((cols, positive, -block[rows, cols], rows))
    rows, cols = rows[order], cols[order]
    starts = np.searchsorted(rows, np.arange(b))
    return [cols[start:start + min(length, n)] for start, length in zip(starts, lengths)]


def ranked_lists(sims, i2t_lengths, t2i_lengths, captions_per_image=CAPTIONS_PER_IMAGE,
                 rows_per_chunk=256, cols_per_chunk=1024, progress=False):
    """Ranked lists of a score matrix, as row and column indices.

    sims (n_img, n_cap) with captions cpi*i .. cpi*i+cpi-1 describing image i;
    i2t_lengths (n_img,), t2i_lengths (n_cap,): how many items each query's list holds.
    -> (i2t: n_img arrays of caption indices, t2i: n_cap arrays of image indices).

    Never more than a chunk of `sims` is copied: a block of rows_per_chunk image rows, or of
    cols_per_chunk caption columns made contiguous (cols_per_chunk, n_img); top_items adds
    a partitioned copy and a mask of that block.
    """
    n_img, n_cap = sims.shape
    cpi = captions_per_image
    i2t_lengths, t2i_lengths = np.asarray(i2t_lengths), np.asarray(t2i_lengths)
    i2t, t2i = [], []
    with tqdm(total=n_img + n_cap, desc="rank", unit="query", disable=not progress) as bar:
        for r0 in range(0, n_img, rows_per_chunk):
            images = np.arange(r0, min(r0 + rows_per_chunk, n_img))
            i2t += top_items(sims[images[0]:images[-1] + 1], i2t_lengths[images], cpi * images, cpi)
            bar.update(len(images))
        for c0 in range(0, n_cap, cols_per_chunk):
            captions = np.arange(c0, min(c0 + cols_per_chunk, n_cap))
            block = np.ascontiguousarray(sims[:, captions[0]:captions[-1] + 1].T)
            t2i += top_items(block, t2i_lengths[captions], captions // cpi, 1)
            bar.update(len(captions))
    return i2t, t2i


def as_id_lists(i2t, t2i, image_ids, caption_ids, image_rows=None, caption_cols=None):
    """Index lists -> the package's {image id: [caption ids]}, {caption id: [image ids]}.
    image_rows / caption_cols: the global index of each local row / column (a fold's block)."""
    image_rows = np.arange(len(i2t)) if image_rows is None else image_rows
    caption_cols = np.arange(len(t2i)) if caption_cols is None else caption_cols
    col_ids, row_ids = caption_ids[caption_cols], image_ids[image_rows]
    return ({int(row_ids[i]): col_ids[items].tolist() for i, items in enumerate(i2t)},
            {int(col_ids[c]): row_ids[items].tolist() for c, items in enumerate(t2i)})


def list_lengths(ground_truths, query_ids):
    """How deep each query's list must go: max(10, its largest ground-truth count among
    `ground_truths` ({query id: ids} dicts)) -> (n,) int64 (R-Precision and mAP@R read R items)."""
    lengths = np.full(len(query_ids), max(RECALL_KS), dtype=np.int64)
    for truth in ground_truths:
        counts = np.array([len(truth.get(int(q), ())) for q in query_ids], dtype=np.int64)
        np.maximum(lengths, counts, out=lengths)
    return lengths


# ---------------------------------------------------------------- the package's metrics

def _quietly(call, *args, **kwargs):
    """Run a package call with its unconditional tqdm bars (stderr) silenced."""
    with contextlib.redirect_stderr(io.StringIO()):
        return call(*args, **kwargs)


def _directions(values_by_key):
    """{'r1': {'i2t': fraction, 't2i': fraction}, ...} -> {'i2t_r1': percent, ..., 't2i_r1': ...}."""
    return {f"{direction}_{key}": 100.0 * float(per_direction[direction])
            for direction in ("i2t", "t2i") for key, per_direction in values_by_key.items()}


def _recalls(call, lists):
    return _directions({f"r{k}": _quietly(call, lists, "all", K=k) for k in RECALL_KS})


def package_results(package, names, lists):
    """The package's metrics of ranked id lists ({'i2t': {...}, 't2i': {...}}), in percent.

    names: some of 'coco_5k', 'coco_1k' (lists: each query's within its 1K fold), 'cxc', 'eccv',
    'pmrp'. -> {name: {'i2t_r1': ..., 't2i_r1': ...}}: R@1/5/10 for COCO and CxC, those and
    'rprecision', 'map_at_r' for ECCV, 'rprecision' for PMRP (keys like 't2i_map_at_r').
    """
    def eccv():
        values = _quietly(package.eccv_metrics, lists, "all")
        return {**_recalls(package.eccv_recalls, lists),
                **_directions({key: values[f"eccv_{key}"] for key in ("rprecision", "map_at_r")})}

    calls = {"coco_5k": lambda: _recalls(package.coco_5k_recalls, lists),
             "coco_1k": lambda: _recalls(package.coco_1k_recalls, lists),
             "cxc": lambda: _recalls(package.cxc_recalls, lists), "eccv": eccv,
             "pmrp": lambda: _directions({"rprecision": _quietly(package.pmrp, lists, "all")})}
    return {name: calls[name]() for name in names}


def cross_check(package_values, our_values, name, tolerance=1e-6):
    """XDimError unless the package's R@1/5/10 (percent) equal ours for both directions."""
    for key, value in package_values.items():
        if abs(value - our_values[key]) > tolerance:
            raise XDimError(f"--protocols: eccv_caption's {name} {key} is {value:.4f}, this codebase's is "
                            f"{our_values[key]:.4f} on the same scores: the ids or the ranked lists are wrong, "
                            f"no benchmark reported")


GROUND_TRUTHS = {"coco": "coco_gts", "cxc": "cxc_gts", "eccv": "eccv_gts", "pmrp": "pm_gts"}


def ground_truths(package, protocols):
    """{benchmark: {'i2t': {image id: caption ids}, 't2i': {caption id: image ids}}} for COCO
    (always: the cross-check) and each of `protocols`."""
    return {name: getattr(package, GROUND_TRUTHS[name]) for name in GROUND_TRUTHS
            if name == "coco" or name in protocols}


def check_queries(truths, image_ids, caption_ids):
    """XDimError naming the first benchmark whose queries are not all in the split (only a
    user's PM files can do that: the package's own cover the 5K split)."""
    for name, truth in truths.items():
        for direction, ids in (("i2t", image_ids), ("t2i", caption_ids)):
            missing = set(truth[direction]) - set(ids.tolist())
            if missing:
                raise XDimError(f"--protocols {name}: {len(missing)} {direction} queries are not in COCO's "
                                f"5K test split (first: id {min(missing)})")


def benchmark_results(sims, image_ids, package, protocols, ours, progress=False):
    """Every benchmark of `protocols` on a checked 5K score matrix, cross-checked.

    sims (5000, 25000); image_ids (5000,): checked by check_split_ids; ours:
    metrics.run_protocol's results of the same scores ('all', and 'fold_mean' when the 1K
    folds were evaluated). -> {'coco_5k', 'coco_1k' (with folds), 'cxc', 'eccv', 'pmrp'
    (those asked), each {'i2t_r1': percent, ...}, 'queries': {benchmark: {'i2t': n, 't2i': n}}}.
    """
    image_ids, caption_ids = np.asarray(image_ids, dtype=np.int64), np.asarray(package.coco_ids, dtype=np.int64)
    truths = ground_truths(package, protocols)
    check_queries(truths, image_ids, caption_ids)
    i2t, t2i = ranked_lists(sims, list_lengths([t["i2t"] for t in truths.values()], image_ids),
                            list_lengths([t["t2i"] for t in truths.values()], caption_ids), progress=progress)
    lists = dict(zip(("i2t", "t2i"), as_id_lists(i2t, t2i, image_ids, caption_ids)))
    del i2t, t2i
    results = {}
    if "fold_mean" in ours:
        results = package_results(package, ["coco_1k"], fold_ranked_lists(sims, image_ids, caption_ids))
        cross_check(results["coco_1k"], ours["fold_mean"], "COCO 1K")
    results.update(package_results(package, ["coco_5k"] + [name for name in protocols if name != "coco"], lists))
    cross_check(results["coco_5k"], ours["all"], "COCO 5K")
    results["queries"] = {name: {d: len(truth[d]) for d in ("i2t", "t2i")} for name, truth in truths.items()}
    return results


def fold_ranked_lists(sims, image_ids, caption_ids):
    """Each query's top 10 within its 1K fold (images 1000k .. 1000k+999 and their captions),
    as id lists {'i2t': ..., 't2i': ...}: what the package's COCO 1K reads."""
    lists = {"i2t": {}, "t2i": {}}
    n_caps = FOLD_IMAGES * CAPTIONS_PER_IMAGE
    for k in range(len(image_ids) // FOLD_IMAGES):
        rows, cols = np.arange(k * FOLD_IMAGES, (k + 1) * FOLD_IMAGES), np.arange(k * n_caps, (k + 1) * n_caps)
        block = sims[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        i2t, t2i = ranked_lists(block, np.full(len(rows), max(RECALL_KS)), np.full(len(cols), max(RECALL_KS)))
        fold_i2t, fold_t2i = as_id_lists(i2t, t2i, image_ids, caption_ids, rows, cols)
        lists["i2t"].update(fold_i2t)
        lists["t2i"].update(fold_t2i)
    return lists


def coco_rows(ours):
    """The COCO rows from this codebase's own results (what `--protocols coco` alone shows)."""
    keys = [f"{d}_r{k}" for d in ("i2t", "t2i") for k in RECALL_KS]
    rows = {"coco_5k": {key: ours["all"][key] for key in keys}}
    if "fold_mean" in ours:
        rows = {"coco_1k": {key: ours["fold_mean"][key] for key in keys}, **rows}
    return rows


# ---------------------------------------------------------------- output

def protocols_table(results):
    """The benchmarks as one table, both directions; '-' where a benchmark has no such metric."""
    names = [name for name in ROW_LABELS if name in results]
    width = max(len(ROW_LABELS[name]) for name in names)
    cells = " ".join(f"{title:>6}" for _, title in COLUMNS)
    span = len(cells)
    lines = [f"{'':{width}} | {'image-to-text':^{span}} | {'text-to-image':^{span}}",
             f"{'':{width}} | {cells} | {cells}"]
    lines.append("-" * len(lines[1]))
    for name in names:
        values = results[name]
        halves = [" ".join(f"{values[f'{d}_{key}']:6.1f}" if f"{d}_{key}" in values else f"{'-':>6}"
                           for key, _ in COLUMNS) for d in ("i2t", "t2i")]
        lines.append(f"{ROW_LABELS[name]:{width}} | {halves[0]} | {halves[1]}")
    return "\n".join(lines)



# ---------------------------------------------------------------- what eval.py calls

def ids_file(images_path=None, data_path=None, data_name=None, split="testall"):
    """The split's image-id file: beside its features (S_ims.npy -> S_ids.txt), else
    data_path/data_name/S_ids.txt; None when neither is known (score files alone)."""
    beside_features = split_file(images_path, "_ids.txt") if images_path else None
    if beside_features:
        return beside_features
    if data_path and data_name:
        return os.path.join(data_path, data_name, f"{split}_ids.txt")
    return None


def prepare(protocols, pm_dir, shape, path):
    """Everything checked before scoring: the 5K shape, the package, the ids.

    shape: (n_images, n_captions) of the scores; path: the split's ids file (ids_file).
    -> (package, image ids (5000,), ids path), or None for `coco` alone (its rows are this
    codebase's own metrics).
    """
    check_split_shape(*shape)
    if not needs_package(protocols):
        return None
    package = load_package(pm_dir)
    if path is None:
        raise XDimError("--protocols needs the split's COCO image ids: give --data_path (and --data_name) "
                        "so that DATA_PATH/coco_precomp/testall_ids.txt is found")
    image_ids = read_image_ids(path, shape[0])
    check_split_ids(image_ids, package, path)
    return package, image_ids, path


def evaluate(sims, ours, protocols, prepared, progress=False):
    """The benchmarks of `protocols` -> the JSON's 'protocols' entry: a {'i2t_r1': percent, ...}
    dict per benchmark ('coco_1k' with the folds, 'coco_5k', 'cxc', 'eccv', 'pmrp'), and,
    when the package ran, 'queries', the 'ids' checked and the 'cross_check' done.

    ours: metrics.run_protocol's results of `sims`; prepared: what `prepare` returned.
    """
    if prepared is None:
        return coco_rows(ours)
    package, image_ids, ids_path = prepared
    results = benchmark_results(sims, image_ids, package, protocols, ours, progress)
    if "coco" not in protocols:
        results = {key: value for key, value in results.items() if not key.startswith("coco_")}
    results["ids"] = {"image_ids": ids_path, "caption_ids": f"eccv_caption {version('eccv_caption')} coco_test_ids.npy",
                      "checked": "image i is the image of captions 5i..5i+4 in the package's COCO ground truth"}
    results["cross_check"] = ("eccv_caption's COCO 5K" + (" and 1K" if "fold_mean" in ours else "")
                              + " R@1/5/10 equal this codebase's")
    return results


def checked_note(results):
    """' (ids checked: PATH)' when the package ran on checked ids, else ''."""
    return f" (ids checked: {results['ids']['image_ids']})" if "ids" in results else ""
