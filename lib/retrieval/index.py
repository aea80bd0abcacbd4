"""Two-stage retrieval over a gallery index: a FAISS shortlist of global vectors, then X-Dim.

X-Dim scores a pair by cross-attention between words and regions, so exhaustive
search costs one similarity per gallery item and query. Here:

1. Stage one: every gallery item has one global vector (lib.retrieval.shortlist); a FAISS
   inner-product index returns the `shortlist` items whose vectors best match the
   query's. Exact (`IndexFlatIP`) below APPROXIMATE_FROM items, HNSW from there.
2. Stage two: `model.forward_sim` scores the query against those items only, from
   their stored region (or token) embeddings, and the best `top_k` are returned.

An index is a folder written once by `build_index` (retrieve.py build):

    manifest.json  what was indexed, with which checkpoint and global vectors
    regions.npy    float16 (n, R, d) region embeddings        (image gallery)
    lengths.npy    int64 (n,) real regions per image           (image gallery)
    tokens.npy     float16 (total tokens, d) token embeddings  (caption gallery)
    offsets.npy    int64 (n + 1,) caption c = tokens[offsets[c]:offsets[c + 1]]
    global.npy     float32 (n, g) global vectors
    faiss.index    the stage-one index over global.npy
    items.txt      one line per item: image ids, or the captions themselves

At query time only the shortlisted rows of the embeddings are read from disk
(`RowReader`), so a gallery larger than memory costs one disk read per candidate.
The manifest holds fingerprints of the checkpoint's weights and of the
global-vector head: opening an index with other weights is an
error (a stale index), as is any file whose size or shape disagrees with the
manifest (a damaged index). A build writes into a visible staging folder
(`<index>.staging-<pid>`, lib.formats.atomic) and swaps it into place when complete,
so a failed build leaves any existing index untouched; `--overwrite` replaces only
a folder that is one of our indexes.
"""
import contextlib
import json
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

from lib.data.butd import NpyWriter
from lib.data.precomp import check_features_finite, load_region_features, pad_images, read_captions, split_file
from lib.errors import XDimError, first_line
from lib.evaluation import metrics
from lib.evaluation.encoding import TokenIds, caption_embedding_batches, image_embedding_batches
from lib.evaluation.scoring import model_caption_tokenizer
from lib.formats.atomic import atomic_file, atomic_folder, write_json
from lib.formats.checkpoint import weights_fingerprint
from lib.formats.versioned import FileFormat, check_fields, check_versioned
from lib.retrieval import shortlist
from lib.runtime import distributed

INDEX_FORMAT = "xdim-gallery-index"
INDEX_VERSION = 1
INDEX_FILE = FileFormat(INDEX_FORMAT, "a gallery index manifest", INDEX_VERSION,
                        fields={"gallery": str, "count": int, "embed_size": int, "index_type": str,
                                "global": dict, "model": dict, "source": dict},
                        fix="rebuild the index")
# The manifest field that sizes each kind of gallery's embedding file.
GALLERY_SIZE_FIELDS = {"images": "regions", "captions": "tokens"}
DEFAULT_SHORTLIST = 100
DEFAULT_TOP_K = 10
# Galleries below this many items get an exact inner-product index, larger ones HNSW.
# Exact search grows linearly: 1.2-1.3 ms per 100,000 head vectors on 2 CPU cores
# (bench_retrieval.py), so about 60 ms at 5 million, as long as encoding the query
# text; beyond that HNSW keeps stage one at a few milliseconds.
APPROXIMATE_FROM = 5_000_000
HNSW_NEIGHBOURS = 32
HNSW_BUILD_DEPTH = 80
INDEX_TYPES = ("auto", "flat", "hnsw")
FAISS_HINT = "FAISS is not installed: pip install faiss-cpu"


def import_faiss():
    """The faiss module, or XDimError with the install hint."""
    try:
        import faiss
    except ImportError:
        raise XDimError(FAISS_HINT) from None
    return faiss


# ---------------------------------------------------------------- stage one

def choose_index_type(n_items, requested="auto"):
    """'flat' (exact) or 'hnsw' (approximate): `requested`, or by gallery size for 'auto'."""
    if requested not in INDEX_TYPES:
        raise XDimError(f"unknown index type {requested!r} (choose from {', '.join(INDEX_TYPES)})")
    if requested != "auto":
        return requested
    return "flat" if n_items < APPROXIMATE_FROM else "hnsw"


def new_faiss_index(size, index_type):
    """An empty inner-product FAISS index for vectors of `size` floats."""
    faiss = import_faiss()
    if index_type == "flat":
        return faiss.IndexFlatIP(size)
    index = faiss.IndexHNSWFlat(size, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_BUILD_DEPTH
    return index


def faiss_search(index, queries, k):
    """The `k` best items of each query: queries (q, g) -> (scores (q, k) float32, items (q, k) int64).

    k is capped at the gallery size; an HNSW index searches at least 2k candidates deep.
    """
    k = min(k, index.ntotal)
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = max(2 * k, 64)
    scores, items = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return scores, items


def exact_shortlist(gallery, queries, k):
    """Exact stage one in memory: gallery (n, g), queries (q, g) -> items (q, min(k, n)) int64, best first."""
    index = new_faiss_index(gallery.shape[1], "flat")
    index.add(np.ascontiguousarray(gallery, dtype=np.float32))
    return faiss_search(index, queries, k)[1]


# ---------------------------------------------------------------- two-stage evaluation

def _two_stage_matrix(sims, candidates, axis):
    """sims (n_img, n_cap) with every pair outside the shortlists set below all scores.

    candidates (n_queries, k): the shortlisted images of each caption (axis 0) or
    captions of each image (axis 1). The floor is finite (metrics reject inf) and
    ties among non-shortlisted items count against the query, as all ties do.
    """
    out = np.full(sims.shape, sims.min() - 1.0, dtype=np.float32)
    queries = np.arange(candidates.shape[0])[:, None]
    if axis == 0:
        out[candidates, queries] = sims[candidates, queries]
    else:
        out[queries, candidates] = sims[queries, candidates]
    return out


def _pair_ids(candidates, axis, n_cap):
    """Flat pair ids (image * n_cap + caption) of the shortlisted pairs, candidates as in _two_stage_matrix."""
    queries = np.arange(candidates.shape[0])[:, None]
    images, caps = (candidates, queries) if axis == 0 else (queries, candidates)
    return (images * n_cap + caps).reshape(-1)


def two_stage_metrics(sims, img_global, cap_global, k, captions_per_image=5):
    """Recalls when each query's exact stage one keeps `k` items and X-Dim ranks those.

    sims (n_img, n_cap): the X-Dim scores (the shortlisted ones are what stage two
    would compute); img_global (n_img, g), cap_global (n_cap, g).
    -> (metrics dict like metrics.evaluate_sims, pair fraction): the share of the
    n_img x n_cap pairs whose score stage two needs for all text and image queries.
    """
    n_cap = sims.shape[1]
    images_of_caption = exact_shortlist(img_global, cap_global, k)
    captions_of_image = exact_shortlist(cap_global, img_global, k)
    t2i = metrics.evaluate_sims(_two_stage_matrix(sims, images_of_caption, 0), captions_per_image)[0]
    i2t = metrics.evaluate_sims(_two_stage_matrix(sims, captions_of_image, 1), captions_per_image)[0]
    merged = {key: (i2t if key.startswith("i2t") else t2i)[key] for key in metrics.METRIC_KEYS}
    merged["rsum"] = sum(merged[f"{d}_r{r}"] for d in ("i2t", "t2i") for r in (1, 5, 10))
    pairs = np.union1d(_pair_ids(images_of_caption, 0, n_cap), _pair_ids(captions_of_image, 1, n_cap))
    return merged, len(pairs) / sims.size


def evaluation_vectors(model, model_path, img_emb, captions):
    """Global vectors of an evaluated split with the checkpoint's head (or mean pooling without one).

    img_emb (n_img, R, d); captions: RaggedCaptions. -> (img_global (n_img, g), cap_global (n_cap, g),
    the encoder's description).
    """
    encoder = shortlist.global_encoder(model, weights_fingerprint(model.state_dict()), model_path)
    return (shortlist.image_vectors(encoder, img_emb, device=model.device),
            shortlist.caption_vectors(encoder, captions, device=model.device), encoder.describe())


def two_stage_protocol(sims, img_global, cap_global, k, captions_per_image=5, fold5=False, fold_images=1000):
    """eval.py --shortlist: {'k', 'pair_fraction', 'all'} and, with fold5, 'folds', 'fold_mean'
    and 'fold_pair_fraction', the mean over the folds of their pair fractions (each fold shortlists
    within its own images and captions)."""
    results = {"k": k}
    results["all"], results["pair_fraction"] = two_stage_metrics(sims, img_global, cap_global, k,
                                                                  captions_per_image)
    if fold5:
        folds, fractions = [], []
        for rows, cols in metrics.fold_slices(5, fold_images, captions_per_image):
            fold, fraction = two_stage_metrics(sims[rows, cols], img_global[rows], cap_global[cols], k,
                                               captions_per_image)
            folds.append(fold)
            fractions.append(fraction)
        results["folds"], results["fold_mean"] = folds, metrics.mean_metrics(folds)
        results["fold_pair_fraction"] = float(np.mean(fractions))
    return results


# ---------------------------------------------------------------- index files

@dataclass
class Hit:
    """One retrieved item: its rank (1 = best), row in the gallery, id or caption, and scores."""
    rank: int
    index: int
    item: str
    score: float
    global_score: float


def _companion(path, suffix):
    """'x/test_ims.npy' -> 'x/test' + suffix if that file exists, else None."""
    candidate = split_file(path, suffix)
    return candidate if candidate and os.path.isfile(candidate) else None


def read_image_ids(images_path, n_images):
    """Image ids from the {split}_ids.txt beside {split}_ims.npy (convert_features.py writes it),
    else '0' .. 'n-1'."""
    ids_path = _companion(images_path, "_ids.txt")
    if ids_path is None:
        return [str(i) for i in range(n_images)]
    with open(ids_path, encoding="utf-8") as f:
        ids = f.read().splitlines()
    if len(ids) != n_images:
        raise XDimError(f"{ids_path}: {len(ids)} ids for the {n_images} images of {images_path}")
    return ids


def read_region_counts(images_path, n_images, regions):
    """Real regions per image (n,) int64 from {split}_image_info.npy if present, else all `regions`."""
    info_path = _companion(images_path, "_image_info.npy")
    if info_path is None:
        return np.full(n_images, regions, dtype=np.int64)
    try:
        info = np.load(info_path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise XDimError(f"{info_path}: not a readable .npy array ({first_line(err)})") from None
    if info.shape != (n_images, 3) or info.dtype.kind not in "iu":
        raise XDimError(f"{info_path}: expected integers of shape ({n_images}, 3), got {info.dtype} {info.shape}")
    counts = info[:, 2].astype(np.int64)
    if counts.min() < 1 or counts.max() > regions:
        raise XDimError(f"{info_path}: region counts must lie in 1..{regions}")
    return counts


def load_gallery_images(path, img_dim):
    """-> (memory-mapped features (n, R, img_dim), ids, real region counts (n,)); checks the feature size."""
    images = load_region_features(path)
    if images.shape[2] != img_dim:
        raise XDimError(f"{path}: region features have size {images.shape[2]}, "
                        f"but the checkpoint expects {img_dim}")
    return images, read_image_ids(path, len(images)), read_region_counts(path, len(images), images.shape[1])


def _write_items(path, items):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(item + "\n" for item in items)


def _staging_on_main(index_dir):
    """The index's staging folder (lib.formats.atomic.atomic_folder) on rank 0; elsewhere a
    context yielding None (the other processes encode, rank 0 alone writes)."""
    return atomic_folder(index_dir) if distributed.is_main() else contextlib.nullcontext()


def _gallery_batches(n, batch_size):
    """The encoder batches of a gallery of n items: [(start, stop), ...]."""
    return [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def _my_rows(batches):
    """The rows of this process's batches: under torchrun batches rank, rank + N, rank + 2N, ..."""
    mine = batches[distributed.rank()::distributed.world_size()]
    return np.concatenate([np.arange(start, stop) for start, stop in mine]) if mine else np.zeros(0, np.int64)


def _write_in_rounds(batches, encode_next, rows_of, writers):
    """Encode a gallery's batches round-robin over the processes; rank 0 writes them in order.

    Round r: process k encodes batch r * N + k (`encode_next()` -> its arrays, one per file, as
    numpy), rank 0 receives them and appends each array to its file (`writers`: NpyWriters on
    rank 0, None elsewhere); rows_of(start, stop) -> the rows each array has for a batch.
    One process: every batch in turn, written as it comes.
    """
    world, me = distributed.world_size(), distributed.rank()
    for first in range(0, len(batches), world):
        round_batches = batches[first:first + world]
        with distributed.together():
            arrays = encode_next() if me < len(round_batches) else None
        with distributed.together():  # a failed write on rank 0 stops the others too
            for k, rows in enumerate(zip(*(rows_of(start, stop) for start, stop in round_batches))):
                local = torch.empty(0) if arrays is None else torch.from_numpy(arrays[k])
                whole = distributed.gather_to_main(local, list(rows) + [0] * (world - len(round_batches)))
                if whole is not None:
                    writers[k].write(whole.numpy())


def _open_writers(folder, arrays):
    """NpyWriters of `arrays` {name: (shape, dtype)} in `folder` on rank 0, None on the other processes."""
    if not distributed.is_main():
        return None
    return [NpyWriter(os.path.join(folder, name), shape, dtype) for name, (shape, dtype) in arrays.items()]


def _close(writers):
    for writer in writers or []:
        writer.close()


def _encode_image_gallery(model, encoder, images, counts, folder, batch_size, progress):
    """Region embeddings (float16) and global vectors of every image, appended to files in `folder`
    (under torchrun the processes share the batches and rank 0 writes)."""
    n, regions = images.shape[:2]
    batches = _gallery_batches(n, batch_size)
    encoded = image_embedding_batches(model, images, _my_rows(batches), counts, batch_size,
                                      progress=progress and distributed.is_main())

    def encode_next():
        emb, lengths, _ = next(encoded)
        return emb.cpu().numpy().astype(np.float16), encoder.images(emb, lengths).cpu().numpy()

    writers = _open_writers(folder, {"regions.npy": ((n, regions, model.config.embed_size), np.float16),
                                     "global.npy": ((n, encoder.size), np.float32)})
    _write_in_rounds(batches, encode_next, lambda start, stop: (stop - start, stop - start), writers)
    _close(writers)
    if writers:
        np.save(os.path.join(folder, "lengths.npy"), counts)
    return {"regions": int(regions)}


def caption_token_ids(captions, caption_tokenizer, progress=True):
    """Token ids (list of lists) of every caption."""
    return [caption_tokenizer.encode(c) for c in tqdm(captions, desc="tokenize", disable=not progress)]


def _encode_caption_gallery(model, encoder, token_ids, folder, batch_size, progress):
    """Token embeddings (float16, unpadded) and global vectors of every caption, appended to files in `folder`
    (under torchrun the processes share the batches and rank 0 writes)."""
    offsets = np.concatenate([[0], np.cumsum([len(ids) for ids in token_ids])]).astype(np.int64)
    batches = _gallery_batches(len(token_ids), batch_size)
    encoded = caption_embedding_batches(model, TokenIds(token_ids), _my_rows(batches), batch_size,
                                        progress=progress and distributed.is_main())

    def encode_next():
        emb, lens, _ = next(encoded)
        real = torch.arange(emb.shape[1]) < lens[:, None]
        return emb.cpu()[real].numpy().astype(np.float16), encoder.captions(emb, lens).cpu().numpy()

    writers = _open_writers(folder, {"tokens.npy": ((int(offsets[-1]), model.config.embed_size), np.float16),
                                     "global.npy": ((len(token_ids), encoder.size), np.float32)})
    _write_in_rounds(batches, encode_next, lambda start, stop: (int(offsets[stop] - offsets[start]), stop - start),
                     writers)
    _close(writers)
    if writers:
        np.save(os.path.join(folder, "offsets.npy"), offsets)
    return {"tokens": int(offsets[-1])}


def write_faiss_index(folder, size, index_type, chunk=65536):
    """Build `folder`/faiss.index from `folder`/global.npy (vectors of `size` floats), a chunk at a time."""
    faiss = import_faiss()
    vectors = np.load(os.path.join(folder, "global.npy"), mmap_mode="r")
    index = new_faiss_index(size, index_type)
    for start in range(0, len(vectors), chunk):
        index.add(np.ascontiguousarray(vectors[start:start + chunk]))
    data = faiss.serialize_index(index)  # written by Python, so a full disk is an OSError, not faiss's RuntimeError
    with atomic_file(os.path.join(folder, "faiss.index"), size=data.nbytes) as f:
        f.write(data.tobytes())


def _load_manifest(path):
    """The JSON of a manifest file, unchecked; XDimError when it cannot be read or parsed."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise XDimError(f"{path}: damaged ({first_line(err)}); rebuild the index") from None


def _is_index_folder(folder):
    """True when `folder` holds a manifest.json of our index format (any version, even damaged)."""
    try:
        manifest = _load_manifest(os.path.join(folder, "manifest.json"))
    except XDimError:
        return False
    return isinstance(manifest, dict) and manifest.get("format") == INDEX_FORMAT


def _inside(path, folder):
    """True when `path` is `folder` or lies inside it (links resolved)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_index_target(index_dir, overwrite, inputs=()):
    """XDimError (one line, nothing changed on disk) unless a build may write `index_dir`.

    Refused: a file (or anything but a folder) named `index_dir`; a folder holding or
    being one of the existing paths of `inputs` ((option, path) pairs, e.g. ("--images", path)); an existing
    folder without `overwrite`; with `overwrite`, a folder that is neither empty nor
    one of our indexes (its manifest says so).
    """
    if os.path.lexists(index_dir) and not os.path.isdir(index_dir):
        raise XDimError(f"--index {index_dir}: is a file, not an index folder; give the name of a folder "
                        f"to create (nothing was changed)")
    for option, path in inputs:
        if path and os.path.exists(path) and _inside(path, index_dir):
            raise XDimError(f"--index {index_dir}: holds {option} {path}, an input of this build; "
                            f"give another --index (nothing was changed)")
    if not os.path.isdir(index_dir):
        return
    if not overwrite:
        raise XDimError(f"{index_dir}: already exists (pass --overwrite to rebuild it)")
    if os.listdir(index_dir) and not _is_index_folder(index_dir):
        raise XDimError(f"--index {index_dir}: not a gallery index (no manifest.json of one), and "
                        f"--overwrite replaces only an index; give another --index (nothing was changed)")


def build_index(model, encoder, index_dir, images=None, captions=None, model_path=None, batch_size=128,
                index_type="auto", overwrite=False, progress=True):
    """Encode a gallery (`images`: a {split}_ims.npy, or `captions`: a text file) into `index_dir`.

    model: XDimModel; encoder: lib.retrieval.shortlist global-vector encoder. -> manifest dict.
    Under torchrun every process calls this and encodes a share of the batches; rank 0
    writes the index (the same files as one process) and returns the manifest, the others None.
    """
    if (images is None) == (captions is None):
        raise XDimError("give exactly one gallery: --images FILE or --captions FILE")
    check_index_target(index_dir, overwrite, [("--images", images), ("--captions", captions),
                                              ("--model_path", model_path)])
    model.val_start()
    if images is not None:
        features, items, counts = load_gallery_images(images, model.config.img_dim)
        check_features_finite(features, images)
        source = {"images": os.path.abspath(images)}
    else:
        items = read_captions(captions)
        if not items:
            raise XDimError(f"--captions {captions}: holds no captions; give a text file with one caption per line")
        token_ids = caption_token_ids(items, model_caption_tokenizer(model), progress)
        query_images = _companion(captions, "_ims.npy")
        source = {"captions": os.path.abspath(captions),
                  "query_images": os.path.abspath(query_images) if query_images else None}
    n_items = len(items)
    index_type = choose_index_type(n_items, index_type)
    with _staging_on_main(index_dir) as staging, torch.no_grad():
        if images is not None:
            shape = _encode_image_gallery(model, encoder, features, counts, staging, batch_size, progress)
        else:
            shape = _encode_caption_gallery(model, encoder, token_ids, staging, batch_size, progress)
        with distributed.together():  # under torchrun rank 0 alone writes the rest, the others wait
            if not distributed.is_main():
                return None
            write_faiss_index(staging, encoder.size, index_type)
            _write_items(os.path.join(staging, "items.txt"), items)
            manifest = {"format": INDEX_FORMAT, "version": INDEX_VERSION,
                        "gallery": "images" if images is not None else "captions",
                        "count": n_items, "embed_size": model.config.embed_size, **shape,
                        "index_type": index_type, "global": encoder.describe(),
                        "model": {"path": os.path.abspath(model_path) if model_path else None,
                                  "fingerprint": weights_fingerprint(model.state_dict())},
                        "source": source}
            write_json(os.path.join(staging, "manifest.json"), manifest)
    return manifest


# ---------------------------------------------------------------- opening an index

def read_manifest(index_dir):
    """The manifest of an index folder, checked for format and version."""
    path = os.path.join(index_dir, "manifest.json")
    if not os.path.isdir(index_dir):
        raise XDimError(f"{index_dir}: no such index folder (build one with retrieve.py build)")
    if not os.path.isfile(path):
        raise XDimError(f"{index_dir}: not a gallery index (no manifest.json)")
    manifest = _load_manifest(path)
    check_versioned(manifest, path, INDEX_FILE)
    if manifest["gallery"] not in GALLERY_SIZE_FIELDS:
        raise XDimError(f"{path}: damaged, field 'gallery' is {manifest['gallery']!r}, expected 'images' or "
                        f"'captions'; {INDEX_FILE.fix}")
    check_fields(manifest, path, {GALLERY_SIZE_FIELDS[manifest["gallery"]]: int}, INDEX_FILE)
    return manifest


def expect_gallery(manifest, index_dir, gallery):
    """XDimError unless the index holds `gallery` ('images' answer text queries, 'captions' image queries)."""
    if manifest["gallery"] != gallery:
        asked = "text queries (--query)" if gallery == "images" else "image queries (--image_index)"
        held = "an image" if manifest["gallery"] == "images" else "a caption"
        raise XDimError(f"{index_dir}: {held} gallery cannot answer {asked}; "
                        f"build the index from --{gallery}")


def check_fingerprints(manifest, index_dir, model, encoder):
    """XDimError when the index was built with other weights or another global-vector encoder."""
    fingerprint = weights_fingerprint(model.state_dict())
    built = manifest["model"].get("fingerprint")
    if built != fingerprint:
        raise XDimError(f"{index_dir}: stale index, built with other weights ({manifest['model'].get('path')}, "
                        f"fingerprint {str(built)[:12]}) than this checkpoint's ({fingerprint[:12]}); "
                        f"rebuild it with retrieve.py build")
    if manifest["global"] != encoder.describe():
        raise XDimError(f"{index_dir}: stale index, its global vectors come from {manifest['global']}, "
                        f"not from {encoder.describe()}; rebuild it or pass the same --head")


def open_array(index_dir, name, shape, dtype):
    """Check an index array against the manifest's shape and dtype -> its memory map (read-only)."""
    path = os.path.join(index_dir, name)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise XDimError(f"{path}: damaged or missing ({first_line(err)}); rebuild the index") from None
    if array.shape != shape or array.dtype != dtype:
        raise XDimError(f"{path}: damaged: holds {array.dtype} {array.shape}, the manifest says "
                        f"{np.dtype(dtype)} {shape}; rebuild the index")
    return array


def _folder_identity(folder):
    """(device, inode) of `folder`, None when it does not exist: a rebuild's swap changes it."""
    try:
        info = os.stat(folder)
    except OSError:
        return None
    return info.st_dev, info.st_ino


class RowReader:
    """Rows of a large .npy array read from disk with one `pread` per contiguous run.

    A memory map would do the same reads through page faults, each pulling in the
    kernel's whole read-ahead window: for 100 scattered rows of a gallery that is
    not in the page cache, pread took 21-25 ms and the memory map 540-630 ms here
    (docs/retrieval.md).
    """

    def __init__(self, path, array):
        self.path = path
        self.file = open(path, "rb")
        self.offset, self.dtype, self.row_shape = array.offset, array.dtype, array.shape[1:]
        self.row_bytes = int(np.prod(self.row_shape)) * array.dtype.itemsize

    def _read_into(self, out, start):
        if os.preadv(self.file.fileno(), [out], self.offset + start * self.row_bytes) != out.nbytes:
            raise XDimError(f"{self.path}: damaged: ends before row {start + len(out) - 1}; rebuild the index")

    def span(self, start, stop):
        """Rows start..stop-1 -> array (stop - start, *row_shape)."""
        out = np.empty((stop - start, *self.row_shape), dtype=self.dtype)
        self._read_into(out, start)
        return out

    def rows(self, indices):
        """Rows `indices` (k,) -> array (k, *row_shape), in that order."""
        out = np.empty((len(indices), *self.row_shape), dtype=self.dtype)
        for slot, index in enumerate(indices):
            self._read_into(out[slot:slot + 1], int(index))
        return out

    def close(self):
        self.file.close()


class GalleryIndex:
    """An opened index: embeddings memory-mapped, the FAISS index in memory.

    Open with `GalleryIndex.open(index_dir, model, encoder)`; then `search_text`
    (image gallery) or `search_image` (caption gallery); `close` when done.
    """

    def __init__(self, index_dir, manifest, model, encoder, faiss_index, items, embeddings):
        """embeddings: (RowReader of regions.npy, lengths (n,)) or (RowReader of tokens.npy, offsets (n + 1,))."""
        self.index_dir = index_dir
        self.manifest = manifest
        self.model = model
        self.encoder = encoder
        self.faiss_index = faiss_index
        self.items = items
        self.embeddings = embeddings
        self._caption_tokenizer = None

    def close(self):
        self.embeddings[0].close()

    @property
    def gallery(self):
        return self.manifest["gallery"]

    def __len__(self):
        return self.manifest["count"]

    @classmethod
    def open(cls, index_dir, model, encoder):
        """Open and check an index. One replaced by a rebuild while it was being opened (its folder
        swapped for the new one midway, so its files disagree) is opened again, once."""
        before = _folder_identity(index_dir)
        try:
            return cls._open(index_dir, model, encoder)
        except XDimError:
            if _folder_identity(index_dir) == before:
                raise
        return cls._open(index_dir, model, encoder)  # the folder was swapped midway: open the new index

    @classmethod
    def _open(cls, index_dir, model, encoder):
        manifest = read_manifest(index_dir)
        check_fingerprints(manifest, index_dir, model, encoder)
        n, d, g = manifest["count"], manifest["embed_size"], encoder.size
        if n < 1:
            raise XDimError(f"{index_dir}: the index holds no {manifest['gallery']}, there is nothing to search; "
                            f"rebuild it from a gallery with at least one item")
        open_array(index_dir, "global.npy", (n, g), np.float32)  # kept to rebuild stage one; checked here
        if manifest["gallery"] == "images":
            name, shape, counts = "regions.npy", (n, manifest["regions"], d), ("lengths.npy", (n,))
        else:
            name, shape, counts = "tokens.npy", (manifest["tokens"], d), ("offsets.npy", (n + 1,))
        rows = RowReader(os.path.join(index_dir, name), open_array(index_dir, name, shape, np.float16))
        counts = np.array(open_array(index_dir, *counts, np.int64))
        items = cls._read_items(index_dir, n)
        faiss_index = cls._read_faiss(index_dir, n, g)
        return cls(index_dir, manifest, model, encoder, faiss_index, items, (rows, counts))

    @staticmethod
    def _read_items(index_dir, n):
        path = os.path.join(index_dir, "items.txt")
        try:
            with open(path, encoding="utf-8") as f:
                items = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise XDimError(f"{path}: damaged or missing ({first_line(err)}); rebuild the index") from None
        if len(items) != n:
            raise XDimError(f"{path}: damaged: {len(items)} lines for {n} items; rebuild the index")
        return items

    @staticmethod
    def _read_faiss(index_dir, n, size):
        faiss = import_faiss()
        path = os.path.join(index_dir, "faiss.index")
        if not os.path.isfile(path):
            raise XDimError(f"{path}: missing; rebuild the index")
        try:
            index = faiss.read_index(path)
        except RuntimeError as err:
            raise XDimError(f"{path}: damaged ({first_line(err)[:160]}); rebuild the index") from None
        except MemoryError:  # a damaged length field asks for more memory than there is
            raise XDimError(f"{path}: damaged (a length field asks for more memory than the machine has); "
                            f"rebuild the index") from None
        if index.ntotal != n or index.d != size:
            raise XDimError(f"{path}: damaged: {index.ntotal} vectors of {index.d}, the manifest says "
                            f"{n} of {size}; rebuild the index")
        return index

    # ----- queries
    def caption_tokenizer(self):
        if self._caption_tokenizer is None:
            self._caption_tokenizer = model_caption_tokenizer(self.model)
        return self._caption_tokenizer

    def _shortlist(self, query, k):
        """Stage one for one query vector (1, g) -> (items (<= k,) int64, their global scores)."""
        scores, items = faiss_search(self.faiss_index, query, k)
        found = items[0] >= 0  # an HNSW search may return fewer than k
        return items[0][found], scores[0][found]

    def _hits(self, candidates, global_scores, scores, top_k):
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [Hit(rank + 1, int(candidates[i]), self.items[candidates[i]], float(scores[i]),
                    float(global_scores[i])) for rank, i in enumerate(order)]

    def search_text(self, text, top_k=DEFAULT_TOP_K, shortlist_size=DEFAULT_SHORTLIST):
        """Text-to-image: the `top_k` images (list of Hit) for one caption, X-Dim scores on a shortlist."""
        expect_gallery(self.manifest, self.index_dir, "images")
        if not text.strip():
            raise XDimError("empty query: give some words to search for")
        ids = torch.tensor([self.caption_tokenizer().encode(text.strip())])
        lens = torch.tensor([ids.shape[1]])
        with torch.no_grad():
            cap_emb = self.model.encode_captions(ids, lens)
            candidates, global_scores = self._shortlist(self.encoder.captions(cap_emb, lens).cpu().numpy(),
                                                        shortlist_size)
            regions, lengths = self.embeddings
            img = torch.from_numpy(regions.rows(candidates)).float().to(self.model.device)
            img_lens = torch.from_numpy(lengths[candidates])
            img_lens = None if bool((img_lens == img.shape[1]).all()) else img_lens.to(self.model.device)
            scores = self.model.forward_sim(img, cap_emb, lens.to(self.model.device), img_lens)[:, 0]
        return self._hits(candidates, global_scores, scores.cpu().numpy(), top_k)

    def search_image(self, regions, region_count=None, top_k=DEFAULT_TOP_K, shortlist_size=DEFAULT_SHORTLIST):
        """Image-to-text: the `top_k` captions (list of Hit) for one image's features (R, img_dim)."""
        expect_gallery(self.manifest, self.index_dir, "captions")
        images = torch.from_numpy(np.array(regions, dtype=np.float32))[None]
        count = torch.tensor([region_count or images.shape[1]])
        with torch.no_grad():
            img_emb = self.model.encode_images(images, count)
        return self.search_encoded_image(img_emb, count, top_k, shortlist_size)

    def search_encoded_image(self, img_emb, count, top_k=DEFAULT_TOP_K, shortlist_size=DEFAULT_SHORTLIST):
        """Image-to-text for an image already encoded: img_emb (1, R, d), count (1,) real regions -> Hits."""
        expect_gallery(self.manifest, self.index_dir, "captions")
        with torch.no_grad():
            candidates, global_scores = self._shortlist(self.encoder.images(img_emb, count).cpu().numpy(),
                                                        shortlist_size)
            tokens, offsets = self.embeddings
            caps, lens = pad_images([torch.from_numpy(tokens.span(offsets[c], offsets[c + 1])).float()
                                     for c in candidates])
            img_lens = None if int(count) == img_emb.shape[1] else count.to(self.model.device)
            scores = self.model.forward_sim(img_emb, caps.to(self.model.device), lens.to(self.model.device),
                                            img_lens)[0]
        return self._hits(candidates, global_scores, scores.cpu().numpy(), top_k)


def hits_as_dicts(hits):
    """Hits as plain dicts (for JSON)."""
    return [asdict(hit) for hit in hits]
