"""Region features from the bottom-up-attention (BUTD) extractors, converted to the precomp layout.

Two inputs are read, one image at a time:
- the original extractor's TSV files: one line per image, tab-separated fields
  `image_id, image_w, image_h, num_boxes, boxes, features`, where `boxes` and
  `features` are base64 strings of float32 arrays (num_boxes, 4) and
  (num_boxes, feature_dim);
- a folder of bottom-up-attention.pytorch `.npz` files, one per image (the file
  name without `.npz` is the image id), holding `x` (num_bbox, feature_dim),
  `bbox` (num_bbox, 4), `num_bbox`, `image_w`, `image_h`.

`convert` writes, into an output folder, for a split name S:
- `S_ims.npy`  float32 (n, regions, feature_dim), what `open_split` reads;
- `S_ids.txt`  the image ids, one per line, in the same order;
- `S_boxes.npy` float32 (n, regions, 4): x1, y1, x2, y2 in pixels;
- `S_image_info.npy` int64 (n, 3): image width, height and the number of real
  (not padded) regions.

Region count rule: every image gets exactly `regions` rows (36, the layout's
size). An image with more keeps its first `regions` boxes in the order the
extractor wrote them (with the fixed-36 extractor settings used for COCO and
Flickr30K nothing is dropped); an image with fewer is padded with zero rows,
and its true count is kept in `S_image_info.npy` (retrieve.py masks the padding).

Conversion streams: the records are counted first (a newline scan of the TSV
files, a file listing for npz), then each record is decoded and appended to the
outputs, so memory does not grow with the number of images.
Outputs are written under visible temporary names (`S_ims.npy.xdim-tmp-<pid>`, ...,
lib.formats.atomic) and renamed only when every record was read, all four as one
group (`S.xdim-commit` exists while they are renamed), so a malformed record
(reported with its file and line) or a full disk leaves the folder as it was, and
no reader takes features of one conversion with ids or boxes of another
(`check_split_complete`); the leftovers of a killed conversion are removed or
completed by the next one.
"""
import base64
import binascii
import io
import os
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from lib.errors import XDimError, first_line
from lib.formats.atomic import (
    PendingFile,
    check_group_complete,
    check_plain_name,
    commit_together,
    complete_interrupted_group,
    report_completed,
)

REGIONS = 36
TSV_FIELDS = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")
NPZ_KEYS = ("x", "bbox", "num_bbox", "image_w", "image_h")
OUTPUT_SUFFIXES = ("_ims.npy", "_ids.txt", "_boxes.npy", "_image_info.npy")


@dataclass
class RegionRecord:
    """One image as an extractor wrote it.

    boxes (num_boxes, 4) float32, features (num_boxes, feature_dim) float32;
    `where` names the record for error messages ("file.tsv line 7").
    """
    image_id: str
    width: int
    height: int
    boxes: np.ndarray
    features: np.ndarray
    where: str


# ---------------------------------------------------------------- readers

def count_tsv_records(paths):
    """Number of non-blank lines over the TSV files (a streaming byte scan)."""
    total = 0
    for path in paths:
        with open(path, "rb") as f:
            total += sum(1 for line in f if line.strip())
    return total


def _parse_int(text, name, where):
    try:
        return int(text)
    except ValueError:
        raise XDimError(f"{where}: {name} is not an integer ({text[:40]!r})") from None


def _decode_floats(text, name, where):
    """A base64 string of float32 values -> 1-D float32 array."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise XDimError(f"{where}: {name} is not valid base64") from None
    if len(raw) % 4:
        raise XDimError(f"{where}: {name} holds {len(raw)} bytes, not a whole number of float32 values")
    return np.frombuffer(raw, dtype=np.float32)


def _tsv_record(row, where):
    """One line's fields (list of str) -> RegionRecord, XDimError naming `where` if malformed."""
    if len(row) != len(TSV_FIELDS):
        raise XDimError(f"{where}: {len(row)} tab-separated fields, expected {len(TSV_FIELDS)} "
                        f"({', '.join(TSV_FIELDS)})")
    image_id, width, height, num_boxes, boxes, features = row
    num_boxes = _parse_int(num_boxes, "num_boxes", where)
    if num_boxes < 1:
        raise XDimError(f"{where}: num_boxes is {num_boxes}, an image needs at least one region")
    boxes = _decode_floats(boxes, "boxes", where)
    if boxes.size != 4 * num_boxes:
        raise XDimError(f"{where}: boxes hold {boxes.size} values, expected 4 x num_boxes = {4 * num_boxes}")
    features = _decode_floats(features, "features", where)
    if features.size == 0 or features.size % num_boxes:
        raise XDimError(f"{where}: features hold {features.size} values, not a multiple of "
                        f"num_boxes = {num_boxes}")
    return RegionRecord(image_id.strip(), _parse_int(width, "image_w", where),
                        _parse_int(height, "image_h", where), boxes.reshape(num_boxes, 4),
                        features.reshape(num_boxes, -1), where)


def read_tsv(paths):
    """Yield the RegionRecords of the original extractor's TSV files, in file and line order.

    Lines are split on tabs directly (the extractor's csv writer never quotes these
    fields), which keeps line numbers exact and needs no csv field-size limit.
    """
    for path in paths:
        with open(path, "rb") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path} line {number}"
                try:
                    row = line.rstrip(b"\r\n").decode("utf-8").split("\t")
                except UnicodeDecodeError:
                    raise XDimError(f"{where}: not valid UTF-8") from None
                yield _tsv_record(row, where)


def list_npz(folder):
    """The `.npz` files of a folder, sorted by name (the conversion order)."""
    if not os.path.isdir(folder):
        raise XDimError(f"{folder}: no such folder (expected bottom-up-attention.pytorch .npz files)")
    names = sorted(name for name in os.listdir(folder) if name.endswith(".npz"))
    if not names:
        raise XDimError(f"{folder}: holds no .npz files")
    return [os.path.join(folder, name) for name in names]


def _npz_record(path):
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [key for key in NPZ_KEYS if key not in data.files]
            if missing:
                raise XDimError(f"{path}: missing {', '.join(missing)} (a bottom-up-attention.pytorch "
                                f"file holds {', '.join(NPZ_KEYS)})")
            features, boxes = data["x"], data["bbox"]
            num_boxes, width, height = (int(np.asarray(data[k]).reshape(-1)[0])
                                        for k in ("num_bbox", "image_w", "image_h"))
    except (OSError, ValueError, EOFError) as err:
        raise XDimError(f"{path}: not a readable .npz file ({first_line(err)})") from None
    if num_boxes < 1:
        raise XDimError(f"{path}: num_bbox is {num_boxes}, an image needs at least one region")
    if features.ndim != 2 or features.shape[0] != num_boxes:
        raise XDimError(f"{path}: x has shape {features.shape}, expected (num_bbox = {num_boxes}, feature size)")
    if boxes.shape != (num_boxes, 4):
        raise XDimError(f"{path}: bbox has shape {boxes.shape}, expected ({num_boxes}, 4)")
    image_id = os.path.basename(path)[:-len(".npz")]
    return RegionRecord(image_id, width, height, boxes.astype(np.float32), features.astype(np.float32), path)


def read_npz(paths):
    """Yield the RegionRecords of bottom-up-attention.pytorch `.npz` files, in the given order."""
    for path in paths:
        yield _npz_record(path)


# ---------------------------------------------------------------- writer

def output_paths(out_folder, split):
    """{suffix: path} of the files `convert` writes for `split`; XDimError for a split name that
    would put them outside `out_folder` (a '/' or '..')."""
    check_plain_name("--split", split, out_folder)
    return {suffix: os.path.join(out_folder, split + suffix) for suffix in OUTPUT_SUFFIXES}


def check_split_complete(images_path):
    """XDimError when `images_path` ({split}_ims.npy) belongs to a group of converted files whose
    renaming into place is under way or was interrupted (ids, boxes or image info may be of
    another conversion). One lstat."""
    folder, name = os.path.split(images_path)
    if name.endswith(OUTPUT_SUFFIXES[0]):
        split = name[:-len(OUTPUT_SUFFIXES[0])]
        check_group_complete(folder or ".", split,
                             f"convert the split again (convert_features.py --out {folder or '.'} --split {split} "
                             f"--overwrite), which also completes the interrupted renames")


def fit_regions(record, regions):
    """-> (features (regions, D), boxes (regions, 4), real count): the first `regions` rows, zero-padded."""
    real = min(len(record.features), regions)
    features = np.zeros((regions, record.features.shape[1]), dtype=np.float32)
    boxes = np.zeros((regions, 4), dtype=np.float32)
    features[:real] = record.features[:real]
    boxes[:real] = record.boxes[:real]
    return features, boxes, real


class NpyWriter:
    """Write a .npy file of known shape block by block, appending in order, atomically.

    The rows go to `path`'s temporary name (lib.formats.atomic.PendingFile) with plain
    appends (no memory map), which keeps the resident memory of a large conversion or
    index build flat; `close` renames the finished file onto `path` and raises
    ValueError (removing the temporary file) unless exactly shape[0] rows were written.
    """

    def __init__(self, path, shape, dtype):
        self.path, self.shape, self.dtype, self.rows = path, tuple(shape), np.dtype(dtype), 0
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                      "fortran_order": False, "shape": self.shape})
        data_bytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self.pending = PendingFile(path, size=len(header.getvalue()) + data_bytes)
        self.pending.write(header.getvalue())

    def write(self, block):
        """Append rows: block (b, *shape[1:])."""
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.shape[1:] or self.rows + len(block) > self.shape[0]:
            raise ValueError(f"{self.path}: block {block.shape} does not fit an array {self.shape} "
                             f"after {self.rows} rows")
        self.pending.write(block.tobytes())
        self.rows += len(block)

    def check_complete(self):
        """ValueError (removing the temporary file) unless exactly shape[0] rows were written."""
        if self.rows != self.shape[0]:
            self.pending.discard()
            raise ValueError(f"{self.path}: {self.rows} rows written, expected {self.shape[0]}")

    def close(self):
        self.check_complete()
        self.pending.commit()

    def discard(self):
        """Remove the unfinished file; `path` is left as it was."""
        self.pending.discard()


class _SplitWriter:
    """The four outputs, written under their temporary names; `commit` renames them into place
    as one group (lib.formats.atomic.commit_together)."""

    def __init__(self, out_folder, split, n_images, regions, feature_dim):
        final = output_paths(out_folder, split)
        self.folder, self.split = out_folder, split
        self.feature_dim, self.arrays, self.ids = feature_dim, [], None
        shapes = {"_ims.npy": ((n_images, regions, feature_dim), np.float32),
                  "_boxes.npy": ((n_images, regions, 4), np.float32), "_image_info.npy": ((n_images, 3), np.int64)}
        try:
            for suffix, (shape, dtype) in shapes.items():
                self.arrays.append(NpyWriter(final[suffix], shape, dtype))
            self.ids = PendingFile(final["_ids.txt"], "w", encoding="utf-8")
        except BaseException:
            self.discard()
            raise

    def write(self, image_id, features, boxes, info):
        for array, row in zip(self.arrays, (features, boxes, info)):
            array.write(np.asarray(row)[None])
        self.ids.write(image_id + "\n")

    def commit(self):
        for array in self.arrays:
            array.check_complete()
        commit_together([array.pending for array in self.arrays] + [self.ids], self.folder, self.split)

    def discard(self):
        for array in self.arrays:
            array.discard()
        if self.ids is not None:
            self.ids.discard()


@dataclass
class ConversionSummary:
    """What `convert` wrote: counts of images, and of images cut to or padded up to `regions`."""
    n_images: int
    feature_dim: int
    regions: int
    truncated: int
    padded: int
    paths: dict


def _check_id(record, seen):
    if not record.image_id or any(c in record.image_id for c in "\n\r"):
        raise XDimError(f"{record.where}: image id {record.image_id!r} is empty or spans lines")
    if record.image_id in seen:
        raise XDimError(f"{record.where}: image id {record.image_id!r} appears twice")
    seen.add(record.image_id)


def _check_features(record, feature_dim):
    if record.features.shape[1] != feature_dim:
        raise XDimError(f"{record.where}: features of size {record.features.shape[1]}, "
                        f"earlier images have {feature_dim}")
    if not (np.isfinite(record.features).all() and np.isfinite(record.boxes).all()):
        raise XDimError(f"{record.where}: features or boxes hold NaN or infinite values")


def convert(records, n_images, out_folder, split, regions=REGIONS, overwrite=False, progress=True):
    """Stream `n_images` RegionRecords into the precomp files of `split` in `out_folder`.

    Raises XDimError (leaving the folder unchanged) on a malformed record, a
    duplicate id, a record count other than `n_images`, or existing outputs
    without `overwrite`. -> ConversionSummary.
    """
    if n_images < 1:
        raise XDimError("no image records to convert")
    if regions < 1:
        raise XDimError(f"--regions must be at least 1, got {regions}")
    final = output_paths(out_folder, split)
    report_completed(complete_interrupted_group(out_folder, split))
    existing = [path for path in final.values() if os.path.exists(path)]
    if existing and not overwrite:
        raise XDimError(f"{existing[0]}: already exists (pass --overwrite to replace it)")
    os.makedirs(out_folder, exist_ok=True)
    writer, seen, truncated, padded, row = None, set(), 0, 0, 0
    try:
        for record in tqdm(records, total=n_images, desc=f"convert {split}", disable=not progress):
            if writer is None:
                writer = _SplitWriter(out_folder, split, n_images, regions, record.features.shape[1])
            if row == n_images:
                raise XDimError(f"{record.where}: more records than the {n_images} counted")
            _check_id(record, seen)
            _check_features(record, writer.feature_dim)
            features, boxes, real = fit_regions(record, regions)
            truncated += len(record.features) > regions
            padded += len(record.features) < regions
            writer.write(record.image_id, features, boxes, (record.width, record.height, real))
            row += 1
        if row != n_images:
            raise XDimError(f"read {row} image records, expected {n_images}")
        feature_dim = writer.feature_dim
        writer.commit()
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    return ConversionSummary(n_images, feature_dim, regions, truncated, padded, final)
