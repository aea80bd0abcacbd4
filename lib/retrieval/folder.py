"""A folder of photos as an image gallery: `retrieve.py build --image_folder DIR [--update]`.

With a backbone-mode (raw-image) checkpoint the images need no detector: every JPEG, PNG
and WebP file under DIR (recursively, by name in sorted order) is decoded and put through
the evaluation pixel pipeline (lib.data.images), encoded into grid-cell embeddings, and
stored like any image gallery (lib.retrieval.index): `regions.npy` holds the cells, the
items are the paths relative to DIR ('/'-separated), so the folder may move. Two files
more than an index of region features:

    stamps.npy    int64 (n, 2): each item's size in bytes and modification time (ns) when encoded
    manifest.json source = {"image_folder": DIR (absolute), "skipped": [{"path", "reason"}, ...]}

Files that cannot be decoded are warned about, listed in the manifest and skipped. A link
whose target lies outside DIR is refused before any work; nothing inside DIR is written.
`update=True` re-reads the folder and encodes only the files that are new or changed
(size or time), drops the removed ones and copies the rest from the existing index; the
new index is built in a staging folder and swapped in (lib.formats.atomic), so the old
one answers queries until the swap.
"""
import os
import shutil
import sys
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from lib.data.butd import NpyWriter
from lib.data.images import PixelConfig, pixel_tensor, read_rgb
from lib.errors import XDimError, first_line
from lib.formats.atomic import atomic_folder, write_json, write_text
from lib.formats.checkpoint import weights_fingerprint
from lib.formats.versioned import check_fields
from lib.retrieval import index as retrieval
from lib.runtime import distributed

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
STAMPS = "stamps.npy"
# Rows copied or converted per step when the final arrays are assembled.
ASSEMBLY_ROWS = 256


class FolderFile(NamedTuple):
    """An image file of the folder: path relative to it ('/'-separated), size in bytes, mtime in ns."""
    path: str
    size: int
    mtime_ns: int

    @property
    def stamp(self):
        return (self.size, self.mtime_ns)


# ---------------------------------------------------------------- the folder

def _inside(path, folder):
    """True when `path` (links resolved) is `folder` or lies in it; `folder` already resolved."""
    path = os.path.realpath(path)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def is_image_name(name):
    return name.lower().endswith(IMAGE_SUFFIXES)


def scan_image_folder(root):
    """Every JPEG, PNG and WebP file under `root`, recursively -> list of FolderFile sorted by path.

    Links to files inside `root` are items like any file; links to folders inside it are
    not followed (their files are found where they lie). XDimError (one line, before any
    work) for a missing folder, an empty one, one without image files, and a link whose
    target lies outside `root`.
    """
    if not os.path.isdir(root):
        what = "is a file" if os.path.exists(root) else "no such folder"
        raise XDimError(f"--image_folder {root}: {what}; give the folder holding your photos")
    real_root = os.path.realpath(root)
    found, others = [], 0
    for folder, subfolders, names in os.walk(root):
        for name in subfolders + names:
            path = os.path.join(folder, name)
            if os.path.islink(path) and not _inside(path, real_root):
                raise XDimError(f"--image_folder {root}: {path} is a link to {os.path.realpath(path)}, outside the "
                                f"folder; copy the file in or remove the link (only files inside it are indexed)")
        subfolders.sort()
        for name in sorted(names):
            path = os.path.join(folder, name)
            if not is_image_name(name):
                others += 1
                continue
            stat = os.stat(path)
            found.append(FolderFile(os.path.relpath(path, root).replace(os.sep, "/"), stat.st_size, stat.st_mtime_ns))
    if not found:
        if not others:
            raise XDimError(f"--image_folder {root}: is empty; give the folder holding your photos")
        raise XDimError(f"--image_folder {root}: no JPEG, PNG or WebP file in it ({others} other files)")
    return sorted(found)


# ---------------------------------------------------------------- decoding and encoding

def load_pixels(path, pixels):
    """One image file through the evaluation pipeline -> (3, T, T) float32; XDimError when it cannot be read."""
    return pixel_tensor(read_rgb(path)[0], pixels)


def check_backbone_model(model, model_path, option="--image_folder"):
    """XDimError unless `model` encodes pixels (the raw-image mode); a region model cannot read photos."""
    if not model.config.uses_backbone:
        raise XDimError(f"{option}: {model_path} is a region-feature model (precomp_enc_type "
                        f"{model.config.precomp_enc_type!r}), which reads detector features, not image files; "
                        f"photos need a raw-image checkpoint, one trained with --precomp_enc_type backbone")


def check_photo_file(path, option="--query_image"):
    """XDimError unless `path` is a file (whether it decodes is known when it is read)."""
    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "no such file"
        raise XDimError(f"{option} {path}: {what}; give a photo (JPEG, PNG or WebP)")


def encode_photo(model, model_path, path, option="--query_image"):
    """One photo file through a backbone-mode model -> (img_emb (1, R, d), real cells (1,) int64).

    XDimError for a region-feature model and for a file that is not a readable image.
    """
    check_backbone_model(model, model_path, option)
    check_photo_file(path, option)
    try:
        pixels = load_pixels(path, PixelConfig.for_model(model.config))
    except XDimError as err:
        raise XDimError(f"{option} {err}; give a photo (JPEG, PNG or WebP)") from None
    model.val_start()
    with torch.no_grad():
        img_emb = model.encode_images(pixels[None])
    return img_emb, torch.tensor([img_emb.shape[1]])


class FolderPixels(Dataset):
    """Item k: (pixels (3, T, T) float32 or None, k, why it failed or None) of files[k] under root."""

    def __init__(self, root, files, pixels):
        self.root, self.files, self.pixels = root, files, pixels

    def __len__(self):
        return len(self.files)

    def __getitem__(self, k):
        path = os.path.join(self.root, self.files[k].path)
        try:
            return load_pixels(path, self.pixels), k, None
        except (XDimError, OSError) as err:
            return None, k, first_line(err).removeprefix(f"{path}: ")


def collate_decoded(items):
    """FolderPixels items -> (pixels (b, 3, T, T) or None, decoded item numbers [b], [(k, reason)] failed)."""
    decoded = [(pixels, k) for pixels, k, _ in items if pixels is not None]
    failed = [(k, reason) for pixels, k, reason in items if pixels is None]
    batch = torch.stack([pixels for pixels, _ in decoded]) if decoded else None
    return batch, [k for _, k in decoded], failed


class ScratchRows:
    """Rows of one dtype appended to a raw file in the staging folder, read back as a memory map."""

    def __init__(self, path, dtype):
        self.path, self.dtype, self.rows, self.row_shape = path, np.dtype(dtype), 0, None
        self.file = open(path, "wb")

    def write(self, block):
        self.row_shape = block.shape[1:]
        self.file.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())
        self.rows += len(block)

    def read(self):
        self.file.close()
        if not self.rows:
            return np.zeros((0,), self.dtype)
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.rows, *self.row_shape))


def encode_files(model, encoder, root, files, scratch, batch_size, workers=0, progress=True):
    """Decode and encode `files` (FolderFile list) into raw files in the folder `scratch`.

    -> (encoded: the positions in `files` that were encoded, in order; their region
    embeddings (k, R, d) float16 and global vectors (k, g) float32 as memory maps;
    failed: [(position, reason)]). Undecodable files are warned about on stderr.
    """
    dataset = FolderPixels(root, files, PixelConfig.for_model(model.config))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate_decoded)
    regions = ScratchRows(os.path.join(scratch, "new_regions.raw"), np.float16)
    vectors = ScratchRows(os.path.join(scratch, "new_global.raw"), np.float32)
    encoded, failed = [], []
    with torch.no_grad():
        for pixels, decoded, bad in tqdm(loader, desc="encode images", disable=not progress):
            for k, reason in bad:
                print(f"warning: {os.path.join(root, files[k].path)}: {reason}; skipped",
                      file=sys.stderr)
            failed += bad
            if pixels is None:
                continue
            emb = model.encode_images(pixels)
            regions.write(emb.cpu().numpy())
            vectors.write(encoder.images(emb, None).cpu().numpy())
            encoded += decoded
    return encoded, regions.read(), vectors.read(), failed


# ---------------------------------------------------------------- the index

class OldRows(NamedTuple):
    """What an update reuses: the old index's items with their row and stamp, its regions and global
    vectors, and the files it skipped as unreadable."""
    rows: dict  # path -> (row, (size, mtime_ns))
    regions: object  # RowReader of regions.npy
    vectors: np.ndarray  # (n, g) float32 memory map
    skipped: dict  # path -> (skipped entry, (size, mtime_ns))

    def unchanged(self, file):
        """True when `file` is an item or a skipped file of the old index with the same size and time."""
        known = self.rows.get(file.path) or self.skipped.get(file.path)
        return known is not None and known[1] == file.stamp


def _open_previous(index_dir, model, encoder):
    """The existing folder index at `index_dir`, checked (fingerprints, shapes) -> OldRows."""
    gallery = retrieval.GalleryIndex.open(index_dir, model, encoder)
    if "image_folder" not in gallery.manifest["source"]:
        gallery.close()
        raise XDimError(f"--update {index_dir}: not built from an image folder; rebuild it with --overwrite")
    n = len(gallery)
    stamps = retrieval.open_array(index_dir, STAMPS, (n, 2), np.int64)
    vectors = retrieval.open_array(index_dir, "global.npy", (n, encoder.size), np.float32)
    rows = {item: (row, tuple(int(v) for v in stamps[row])) for row, item in enumerate(gallery.items)}
    return OldRows(rows, gallery.embeddings[0], vectors, _skipped_entries(index_dir, gallery.manifest["source"]))


def _skipped_entries(index_dir, source):
    """{path: (entry, (size, mtime_ns))} of a folder manifest's skipped files; XDimError when damaged."""
    path = os.path.join(index_dir, "manifest.json")
    check_fields(source, path, {"image_folder": str, "skipped": list}, retrieval.INDEX_FILE)
    try:
        return {entry["path"]: (entry, (int(entry["size"]), int(entry["mtime_ns"]))) for entry in source["skipped"]}
    except (KeyError, TypeError, ValueError):
        raise XDimError(f"{path}: damaged, an entry of source.skipped lacks path, size or mtime_ns; "
                        f"{retrieval.INDEX_FILE.fix}") from None


def _rows_to_write(files, old, encoded_rows):
    """For each file to keep, in order: ('old', row) or ('new', k); files neither reused nor encoded are left out."""
    plan = []
    for position, file in enumerate(files):
        if position in encoded_rows:
            plan.append((file, "new", encoded_rows[position]))
        elif old is not None and file.path in old.rows and old.unchanged(file):
            plan.append((file, "old", old.rows[file.path][0]))
    return plan


def _assemble(staging, plan, old, new_regions, new_vectors, region_shape, size):
    """Write regions.npy, global.npy, lengths.npy and stamps.npy of `plan` into `staging`."""
    n = len(plan)
    writers = [NpyWriter(os.path.join(staging, "regions.npy"), (n, *region_shape), np.float16),
               NpyWriter(os.path.join(staging, "global.npy"), (n, size), np.float32)]
    for start in range(0, n, ASSEMBLY_ROWS):
        part = plan[start:start + ASSEMBLY_ROWS]
        regions = np.empty((len(part), *region_shape), np.float16)
        vectors = np.empty((len(part), size), np.float32)
        for source, rows_of in (("new", lambda rows: (new_regions[rows], new_vectors[rows])),
                                ("old", lambda rows: (old.regions.rows(rows), old.vectors[rows]))):
            slots = [slot for slot, (_, kind, _) in enumerate(part) if kind == source]
            if slots:
                regions[slots], vectors[slots] = rows_of([part[slot][2] for slot in slots])
        for writer, block in zip(writers, (regions, vectors)):
            writer.write(block)
    for writer in writers:
        writer.close()
    np.save(os.path.join(staging, "lengths.npy"), np.full(n, region_shape[0], dtype=np.int64))
    np.save(os.path.join(staging, STAMPS), np.array([file.stamp for file, _, _ in plan], dtype=np.int64).reshape(n, 2))


def _region_shape(new_regions, old):
    """(R, d) of the region embeddings: the new rows', else (nothing new decoded) the old index's."""
    return tuple(new_regions.shape[1:]) if len(new_regions) else tuple(old.regions.row_shape)


def check_folder_target(index_dir, image_folder):
    """XDimError when the index would be written inside the image folder (nothing there is written)."""
    index_parent = os.path.dirname(os.path.abspath(index_dir.rstrip(os.sep))) or "."
    if _inside(index_parent, os.path.realpath(image_folder)):
        raise XDimError(f"--index {index_dir}: lies inside --image_folder {image_folder}, which is never written; "
                        f"give an --index outside it")


def check_folder_build(index_dir, image_folder, overwrite, update, model_path):
    """Everything about a folder build that can be checked before the model loads -> the folder's files.

    XDimError under torchrun, for an --index inside the folder or one that may not be
    written (lib.retrieval.index.check_index_target; `update` may replace an index), and
    for a folder without images (scan_image_folder).
    """
    if distributed.world_size() > 1:
        raise XDimError("build --image_folder runs in one process; start it without torchrun")
    check_folder_target(index_dir, image_folder)
    retrieval.check_index_target(index_dir, overwrite or (update and os.path.isdir(index_dir)),
                                 [("--image_folder", image_folder), ("--model_path", model_path)])
    return scan_image_folder(image_folder)


class FolderBuild(NamedTuple):
    """What build_folder_index did: the manifest, how many files it encoded, kept from the previous index
    and dropped from it, and how many of the folder's files are skipped as unreadable."""
    manifest: dict
    encoded: int
    kept: int
    dropped: int
    unreadable: int


def build_folder_index(model, encoder, index_dir, image_folder, model_path=None, batch_size=32, index_type="auto",
                       overwrite=False, update=False, workers=0, progress=True):
    """Index the images of `image_folder` into `index_dir` (a new index, or `update` an existing one).

    model: a backbone-mode XDimModel; encoder: the global-vector encoder. -> FolderBuild,
    or None when an update finds nothing changed (the index is left as it was).
    """
    files = check_folder_build(index_dir, image_folder, overwrite, update, model_path)
    check_backbone_model(model, model_path)
    update = update and os.path.isdir(index_dir)
    model.val_start()
    old = _open_previous(index_dir, model, encoder) if update else None
    files_by_path = {file.path: file for file in files}
    present = set(files_by_path)
    to_encode = [position for position, file in enumerate(files) if old is None or not old.unchanged(file)]
    dropped = 0 if old is None else len(set(old.rows) - present)
    if old is not None and not to_encode and not dropped:
        old.regions.close()
        return None
    skipped = [] if old is None else [entry for path, (entry, _) in old.skipped.items()
                                      if path in present and old.unchanged(files_by_path[path])]
    with atomic_folder(index_dir) as staging:
        scratch = os.path.join(staging, "scratch")
        os.makedirs(scratch)
        encoded, new_regions, new_vectors, failed = encode_files(
            model, encoder, image_folder, [files[p] for p in to_encode], scratch, batch_size, workers, progress)
        plan = _rows_to_write(files, old, {to_encode[k]: row for row, k in enumerate(encoded)})
        if not plan:
            raise XDimError(f"--image_folder {image_folder}: none of its {len(files)} image files could be read "
                            f"(see the warnings above)")
        _assemble(staging, plan, old, new_regions, new_vectors, _region_shape(new_regions, old), encoder.size)
        if old is not None:
            old.regions.close()
        del new_regions, new_vectors
        shutil.rmtree(scratch)
        skipped += [{"path": files[to_encode[k]].path, "reason": reason, "size": files[to_encode[k]].size,
                     "mtime_ns": files[to_encode[k]].mtime_ns} for k, reason in failed]
        manifest = _write_rest(staging, plan, model, encoder, model_path, image_folder, index_type,
                               sorted(skipped, key=lambda entry: entry["path"]))
    kept = sum(source == "old" for _, source, _ in plan)
    return FolderBuild(manifest, len(plan) - kept, kept, dropped, len(manifest["source"]["skipped"]))


def _write_rest(staging, plan, model, encoder, model_path, image_folder, index_type, skipped):
    """items.txt, faiss.index and manifest.json of a folder index in `staging` -> the manifest."""
    n = len(plan)
    index_type = retrieval.choose_index_type(n, index_type)
    retrieval.write_faiss_index(staging, encoder.size, index_type)
    write_text(os.path.join(staging, "items.txt"), "".join(file.path + "\n" for file, _, _ in plan))
    manifest = {"format": retrieval.INDEX_FORMAT, "version": retrieval.INDEX_VERSION, "gallery": "images",
                "count": n, "embed_size": model.config.embed_size,
                "regions": int(np.load(os.path.join(staging, "regions.npy"), mmap_mode="r").shape[1]),
                "index_type": index_type, "global": encoder.describe(),
                "model": {"path": os.path.abspath(model_path) if model_path else None,
                          "fingerprint": weights_fingerprint(model.state_dict())},
                "source": {"image_folder": os.path.abspath(image_folder), "skipped": skipped}}
    write_json(os.path.join(staging, "manifest.json"), manifest)
    return manifest
