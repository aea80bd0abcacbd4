"""Evaluation: encode a split once, score it in shards, compute retrieval metrics.

Pipeline (spec section 6):
1. `encode_split` runs every image through the image encoder once and every
   caption through the text encoder once. Image embeddings are kept as one
   `(n_img, R, d)` tensor, caption embeddings as `RaggedCaptions` (all real
   tokens concatenated plus offsets), never as a padded float64 array.
2. `score_sharded` fills the `(n_img, n_cap)` float32 score matrix block by
   block with any score function `fn(img (b_i, R, d), cap (b_c, L, d), lens (b_c,))
   -> (b_i, b_c)`; captions are sorted by length so a block pads little.
3. `evaluate_sims` turns a score matrix into recalls, medr, meanr and rSum
   (vectorised, ties counted against the model); `evaluate_folds` does the
   COCO 5-fold 1K protocol; `run_protocol` bundles what the scripts print.

Library entry points for other modules:
- `evaluate_split(model, split_files, caption_encoder, batch_size=128, workers=0)
  -> (sims, metrics)`: the whole pipeline on one split (training validation).
- `validate(model, split_files, caption_encoder, ...) -> metrics` (same, metrics only).
"""
import io
import pickle

import numpy as np
import torch
from tqdm import tqdm

from lib.errors import XDimError

STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
METRIC_KEYS = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum",
               "i2t_medr", "i2t_meanr", "t2i_medr", "t2i_meanr"]
# A shard is what one forward_sim call receives: DEFAULT_IMG_BLOCK images and a block of
# captions padded to at most DEFAULT_SHARD_ELEMENTS floats. The similarity bounds its own
# working memory inside a call, so shards can be large: few calls, one dependency-weight
# computation each.
DEFAULT_IMG_BLOCK = 128
DEFAULT_SHARD_ELEMENTS = 2 ** 24


# ---------------------------------------------------------------------------
# Ragged caption storage
# ---------------------------------------------------------------------------

class RaggedCaptions:
    """Caption token embeddings without padding.

    `tokens` is `(total_tokens, d)` (caption 0's tokens, then caption 1's, ...),
    `offsets` is `(n_cap + 1,)` int64 with caption `c` at rows
    `offsets[c]:offsets[c + 1]`. Stored on the CPU in `dtype` (float32, float16
    or bfloat16); blocks are handed out as float32.
    """

    def __init__(self, d, dtype=torch.float32):
        self.d = d
        self.dtype = dtype
        self._chunks = []
        self._chunk_lengths = []
        self._tokens = torch.empty(0, d, dtype=dtype)
        self._offsets = torch.zeros(1, dtype=torch.long)

    @classmethod
    def from_padded(cls, cap_emb, lengths, dtype=torch.float32):
        """Build from a padded batch: cap_emb (n, L, d), lengths (n,)."""
        ragged = cls(cap_emb.shape[-1], dtype)
        ragged.append(cap_emb, lengths)
        return ragged

    def append(self, cap_emb, lengths):
        """Add captions given padded: cap_emb (b, L, d), lengths (b,) with 1 <= lengths <= L."""
        lengths = torch.as_tensor(lengths, dtype=torch.long).cpu()
        if cap_emb.shape[-1] != self.d:
            raise ValueError(f"embedding size {cap_emb.shape[-1]} != {self.d}")
        if len(lengths) and (lengths.min() < 1 or lengths.max() > cap_emb.shape[1]):
            raise ValueError("caption lengths must lie in 1..L")
        keep = torch.arange(cap_emb.shape[1]) < lengths[:, None]
        self._chunks.append(cap_emb.detach().cpu()[keep].to(self.dtype))
        self._chunk_lengths.append(lengths)

    def _consolidate(self):
        if not self._chunks:
            return
        self._tokens = torch.cat([self._tokens] + self._chunks)
        new_offsets = self._offsets[-1] + torch.cumsum(torch.cat(self._chunk_lengths), 0)
        self._offsets = torch.cat([self._offsets, new_offsets])
        self._chunks, self._chunk_lengths = [], []

    @property
    def tokens(self):
        """(total_tokens, d) in the storage dtype."""
        self._consolidate()
        return self._tokens

    @property
    def offsets(self):
        """(n_cap + 1,) int64."""
        self._consolidate()
        return self._offsets

    @property
    def lengths(self):
        """(n_cap,) int64 token counts."""
        return self.offsets.diff()

    def __len__(self):
        return len(self.offsets) - 1

    @property
    def nbytes(self):
        return self.tokens.numel() * self.tokens.element_size() + self.offsets.numel() * 8

    def gather(self, indices):
        """Captions `indices` (b,) padded: -> (float32 (b, Lmax, d) zero-padded, lengths (b,))."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        lengths = self.lengths[indices]
        max_len = int(lengths.max()) if len(indices) else 0
        positions = torch.arange(max_len)
        valid = positions < lengths[:, None]
        rows = self.offsets[indices][:, None] + positions
        rows = torch.where(valid, rows, torch.zeros_like(rows))
        padded = self.tokens.index_select(0, rows.reshape(-1)).reshape(len(indices), max_len, self.d)
        padded = padded.float() * valid[..., None]
        return padded, lengths

    def block(self, start, end):
        """Captions start..end-1 padded: -> (float32 (b, Lmax, d), lengths (b,))."""
        return self.gather(torch.arange(start, end))


# ---------------------------------------------------------------------------
# Encoding and sharded scoring
# ---------------------------------------------------------------------------

def storage_dtype(name):
    if name not in STORAGE_DTYPES:
        raise XDimError(f"unknown storage dtype {name!r} (choose from {', '.join(STORAGE_DTYPES)})")
    return STORAGE_DTYPES[name]


def _check_order(indices, expected_start):
    expected = torch.arange(expected_start, expected_start + len(indices))
    if not torch.equal(torch.as_tensor(indices, dtype=torch.long), expected):
        raise RuntimeError("evaluation loaders must yield items in order")


def encode_images(model, split_files, batch_size=128, workers=0, storage="float32", progress=True):
    """Encode every image of the split once: -> (n_img, R, d) CPU tensor in the storage dtype."""
    from lib.datasets.precomp import image_loader
    loader = image_loader(split_files, batch_size, workers)
    out, done = None, 0
    for images, image_lengths, indices in tqdm(loader, desc="encode images", disable=not progress):
        _check_order(indices, done)
        emb = model.encode_images(images, image_lengths)
        if out is None:
            out = torch.empty(split_files.n_images, *emb.shape[1:], dtype=storage_dtype(storage))
        out[done:done + len(emb)] = emb.detach().cpu().to(out.dtype)
        done += len(emb)
    return out


def encode_captions(model, split_files, caption_encoder, batch_size=128, workers=0,
                    storage="float32", progress=True):
    """Encode every caption of the split once: -> RaggedCaptions."""
    from lib.datasets.precomp import caption_loader
    loader = caption_loader(split_files, caption_encoder, batch_size, workers)
    ragged = None
    for captions, lengths, indices in tqdm(loader, desc="encode captions", disable=not progress):
        _check_order(indices, 0 if ragged is None else len(ragged))
        emb = model.encode_captions(captions, lengths)
        if ragged is None:
            ragged = RaggedCaptions(emb.shape[-1], storage_dtype(storage))
        ragged.append(emb, lengths)
    return ragged


def encode_split(model, split_files, caption_encoder, batch_size=128, workers=0,
                 storage="float32", progress=True):
    """-> (img_emb (n_img, R, d) tensor, RaggedCaptions), in eval mode without gradients."""
    model.val_start()
    with torch.no_grad():
        img_emb = encode_images(model, split_files, batch_size, workers, storage, progress)
        captions = encode_captions(model, split_files, caption_encoder, batch_size, workers,
                                   storage, progress)
    return img_emb, captions


def plan_caption_blocks(sorted_lengths, d, max_elements):
    """Split length-sorted captions into consecutive blocks for scoring.

    A block grows while block_size x (its longest caption) x d (its padded
    embeddings) stays within `max_elements`, and holds at least one caption.
    -> list of (start, end).
    """
    blocks, start = [], 0
    n = len(sorted_lengths)
    while start < n:
        end = start + 1
        while end < n and (end + 1 - start) * int(sorted_lengths[end]) * d <= max_elements:
            end += 1
        blocks.append((start, end))
        start = end
    return blocks


def score_sharded(img_emb, captions, score_fn, img_block=DEFAULT_IMG_BLOCK, max_elements=DEFAULT_SHARD_ELEMENTS,
                  device="cpu", progress=True):
    """Score every image against every caption, one (image block, caption block) shard at a time.

    img_emb (n_img, R, d); captions: RaggedCaptions; score_fn(img (b_i, R, d),
    cap (b_c, L, d), lens (b_c,)) -> (b_i, b_c), called with float32 tensors on
    `device`. -> float32 numpy (n_img, n_cap) in the original caption order.
    """
    n_img, n_cap = len(img_emb), len(captions)
    sims = np.empty((n_img, n_cap), dtype=np.float32)
    order = torch.argsort(captions.lengths, stable=True)
    img_block = max(1, min(img_block, n_img))
    cap_blocks = plan_caption_blocks(captions.lengths[order], captions.d, max_elements)
    img_starts = range(0, n_img, img_block)
    bar = tqdm(total=len(cap_blocks) * len(img_starts), desc="score", disable=not progress)
    for c0, c1 in cap_blocks:
        columns = order[c0:c1]
        cap, lens = captions.gather(columns)
        cap, lens = cap.to(device), lens.to(device)
        for i0 in img_starts:
            img = img_emb[i0:i0 + img_block].to(device=device, dtype=torch.float32)
            block = score_fn(img, cap, lens)
            sims[i0:i0 + len(img), columns.numpy()] = block.detach().float().cpu().numpy()
            bar.update()
    bar.close()
    return sims


def model_sims(model, img_emb, captions, img_block=DEFAULT_IMG_BLOCK, max_elements=DEFAULT_SHARD_ELEMENTS,
               progress=True):
    """The model's (n_img, n_cap) float32 scores via model.forward_sim, sharded."""
    model.val_start()
    with torch.no_grad():
        return score_sharded(img_emb, captions, model.forward_sim, img_block, max_elements,
                             model.device, progress)


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------

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


def evaluate_folds(sims, captions_per_image=5, n_folds=5, fold_images=1000):
    """COCO 1K protocol: metrics of each diagonal fold block and their mean.

    -> (list of n_folds metrics dicts, mean metrics dict).
    """
    if sims.shape[0] < n_folds * fold_images:
        raise XDimError(f"{n_folds} folds of {fold_images} images need at least "
                        f"{n_folds * fold_images} images, the scores hold {sims.shape[0]}")
    folds = [evaluate_sims(sims[rows, cols], captions_per_image)[0]
             for rows, cols in fold_slices(n_folds, fold_images, captions_per_image)]
    return folds, mean_metrics(folds)


def run_protocol(sims, captions_per_image=5, fold5=False, fold_images=1000):
    """What the scripts report: {'all': metrics of the whole matrix} and, with
    fold5, also {'folds': [5 dicts], 'fold_mean': dict}."""
    results = {"all": evaluate_sims(sims, captions_per_image)[0]}
    if fold5:
        results["folds"], results["fold_mean"] = evaluate_folds(sims, captions_per_image, 5, fold_images)
    return results


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
    """Table rows for run_protocol's results: folds, their mean, the whole matrix."""
    rows = []
    if "folds" in results:
        rows += [(f"{name} fold {k}", m) for k, m in enumerate(results["folds"])]
        rows.append((f"{name} 5-fold mean", results["fold_mean"]))
    rows.append((f"{name} all", results["all"]))
    return format_table(rows)


# ---------------------------------------------------------------------------
# Whole-split entry points
# ---------------------------------------------------------------------------

def evaluate_split(model, split_files, caption_encoder, batch_size=128, workers=0, storage="float32",
                   img_block=DEFAULT_IMG_BLOCK, max_elements=DEFAULT_SHARD_ELEMENTS, progress=True):
    """Encode and score one split (split_files from lib.datasets.precomp.open_split).

    -> (sims float32 numpy (n_img, n_cap), metrics dict of the whole matrix:
    METRIC_KEYS, 'rsum' included). Leaves the model in eval mode.
    """
    img_emb, captions = encode_split(model, split_files, caption_encoder, batch_size, workers,
                                     storage, progress)
    sims = model_sims(model, img_emb, captions, img_block, max_elements, progress)
    return sims, evaluate_sims(sims, split_files.captions_per_image)[0]


def validate(model, split_files, caption_encoder, batch_size=128, workers=0, progress=True):
    """Metrics dict (with 'rsum') of `split_files` (e.g. dev) for the training loop."""
    return evaluate_split(model, split_files, caption_encoder, batch_size, workers,
                          progress=progress)[1]


# ---------------------------------------------------------------------------
# Saved score matrices
# ---------------------------------------------------------------------------

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, numpy scalars and plain containers, nothing else."""

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_npy(path):
    """-> array; object arrays are read with _ArrayOnlyUnpickler instead of pickle."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        headers = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}
        dtype = headers[version](f)[2] if version in headers else None
        if dtype is None or not dtype.hasobject:
            f.seek(0)
            return np.load(f, allow_pickle=False)
        return _ArrayOnlyUnpickler(io.BytesIO(f.read())).load()


def load_score_file(path):
    """Read a saved score matrix -> float32 (n_img, n_cap).

    Accepts a plain 2-D .npy (what --save_sims writes) or the official code's
    np.save'd dict {'npts': n_img, 'sims': (n_img, n_cap)}, unpickled with a
    loader that admits only numpy arrays, so a crafted file cannot run code.
    """
    try:
        data = _read_npy(path)
    except FileNotFoundError:
        raise XDimError(f"{path}: no such file") from None
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as err:
        raise XDimError(f"{path}: not a score matrix .npy file ({err})") from None
    if data.dtype.hasobject:
        data = data.item() if data.shape == () else None
        if not isinstance(data, dict) or not isinstance(data.get("sims"), np.ndarray):
            raise XDimError(f"{path}: object .npy without a {{'npts', 'sims'}} dict")
        if "npts" in data and int(data["npts"]) != data["sims"].shape[0]:
            raise XDimError(f"{path}: npts {int(data['npts'])} does not match "
                            f"the {data['sims'].shape[0]} rows of sims")
        data = data["sims"]
    if data.ndim != 2 or not np.issubdtype(data.dtype, np.floating):
        raise XDimError(f"{path}: expected a 2-D float score matrix, got {data.dtype} {data.shape}")
    return data.astype(np.float32)


def save_score_file(sims, path):
    """Write sims as a plain float32 .npy (n_img, n_cap), loadable with allow_pickle=False."""
    np.save(path, np.asarray(sims, dtype=np.float32), allow_pickle=False)


def ensemble_sims(matrices):
    """Average score matrices of equal shape (each (n_img, n_cap)) -> float32."""
    shapes = {m.shape for m in matrices}
    if len(shapes) != 1:
        raise XDimError(f"score matrices to ensemble differ in shape: {sorted(shapes)}")
    total = np.zeros(matrices[0].shape, dtype=np.float64)
    for m in matrices:
        total += m
    return (total / len(matrices)).astype(np.float32)


def infer_captions_per_image(sims, source):
    """1 or 5 captions per image from a (n_img, n_cap) matrix; XDimError otherwise."""
    n_img, n_cap = sims.shape
    for cpi in (5, 1):
        if n_cap == cpi * n_img:
            return cpi
    raise XDimError(f"{source}: {n_img} images x {n_cap} captions is neither 1 nor 5 captions per image")
