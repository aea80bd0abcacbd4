"""Checking a precomp folder against the splits the paper uses (check_data.py).

Two passes. The first reads only names, sizes and .npy headers, so a missing folder or
file, an unreadable file, a file that is not .npy, a wrong shape or dtype and a
truncated download are reported at once. The second reads every file once, front to
back, in fixed-size chunks into one reusable buffer: every feature value must be
finite and every caption valid UTF-8 and non-empty (lib.data.precomp's own rules and
wording); then the caption count must fit the image count.

Each split gets one SplitReport; problems are `errors` (training or evaluation would
stop on them, or compute something else) or `warnings` (counts or feature sizes other
than the paper's, fine for one's own data).

    reports = check_folders(data_path, ["f30k_precomp"])

The raw-image layout (lib.data.images: captions, image ids, id_mapping.json, image files) is
checked by `check_image_dataset` in two passes too: first the text files, the mapping and
the presence of every file; then every distinct image file decoded once (a file shared by
splits is decoded once), in worker processes if asked.

    reports = check_image_dataset(data_path, "f30k")
"""
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from lib.data import images, precomp
from lib.data.butd import check_split_complete
from lib.errors import XDimError, first_line
from lib.formats.npy import read_npy_header

# The Karpathy splits of the paper (docs/data.md, "The precomp layout"): images per split, 5 captions each,
# 36 BUTD regions of 2048 float32 features per image. COCO's train includes restval.
KARPATHY_IMAGES = {
    "f30k_precomp": {"train": 29000, "dev": 1014, "test": 1000},
    "coco_precomp": {"train": 113287, "dev": 5000, "test": 5000, "testall": 5000},
}
PAPER_CAPTIONS_PER_IMAGE = 5
PAPER_REGIONS_FEATURES = (36, 2048)
PAPER_DTYPE = np.dtype(np.float32)
IMAGES_SUFFIX, CAPTIONS_SUFFIX = "_ims.npy", "_caps.txt"
CHUNK_BYTES = 64 * 2 ** 20


@dataclass
class SplitReport:
    """What the check found for `{folder}/{split}_{ims.npy,caps.txt}`.

    shape/dtype/data_offset come from the .npy header (None when it could not be read);
    n_captions is None until the captions were read without error.
    """
    folder: str
    split: str
    shape: tuple = None
    dtype: np.dtype = None
    data_offset: int = 0
    n_captions: int = None
    errors: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    @property
    def images_path(self):
        return os.path.join(self.folder, self.split + IMAGES_SUFFIX)

    @property
    def captions_path(self):
        return os.path.join(self.folder, self.split + CAPTIONS_SUFFIX)

    @property
    def name(self):
        return f"{os.path.basename(self.folder)}/{self.split}"

    @property
    def n_images(self):
        return self.shape[0] if self.shape else None

    @property
    def disk_bytes(self):
        return sum(os.path.getsize(path) for path in (self.images_path, self.captions_path)
                   if os.path.isfile(path))

    @property
    def status(self):
        return report_status(self)


def report_status(report):
    """'error', 'warning' or 'ok': the worst of a report's problems."""
    return "error" if report.errors else "warning" if report.warnings else "ok"


def data_folders(data_path, data_names=None):
    """The folders to check: `data_path/NAME` for each of `data_names`, or, when it is empty,
    every sub-folder of `data_path` holding a split file. XDimError when there is none."""
    if not os.path.isdir(data_path):
        raise XDimError(f"{data_path}: --data_path folder not found")
    if data_names:
        return [os.path.join(data_path, name) for name in data_names]
    if split_names(data_path):
        raise XDimError(f"{data_path}: holds split files itself; pass its parent folder as --data_path "
                        f"and --data_name {os.path.basename(os.path.normpath(data_path))}")
    folders = [os.path.join(data_path, name) for name in sorted(os.listdir(data_path))
               if os.path.isdir(os.path.join(data_path, name)) and split_names(os.path.join(data_path, name))]
    if not folders:
        raise XDimError(f"{data_path}: no sub-folder holds {{split}}{IMAGES_SUFFIX} or {{split}}{CAPTIONS_SUFFIX} "
                        "files; is --data_path the folder above f30k_precomp/ or coco_precomp/?")
    return folders


def split_names(folder):
    """Splits with a features or a captions file in `folder`, the paper's four first, then others by name."""
    names = {entry[:-len(suffix)] for entry in os.listdir(folder)
             for suffix in (IMAGES_SUFFIX, CAPTIONS_SUFFIX) if entry.endswith(suffix) and len(entry) > len(suffix)}
    known = [split for split in ("train", "dev", "test", "testall") if split in names]
    return known + sorted(names - set(known))


# ---------------------------------------------------------------- pass 1: names, sizes, headers

def inspect_folder(folder):
    """Pass 1 over one folder -> a SplitReport per split, with every problem found from
    names, sizes and headers alone. A missing folder is one report with split '*'."""
    if not os.path.isdir(folder):
        report = SplitReport(folder, "*")
        report.errors.append(f"{folder}: data folder not found (check --data_path and --data_name)")
        return [report]
    reports = [inspect_split(folder, split) for split in split_names(folder)]
    if not reports:
        report = SplitReport(folder, "*")
        report.errors.append(f"{folder}: holds no {{split}}{IMAGES_SUFFIX} / {{split}}{CAPTIONS_SUFFIX} files")
        return [report]
    expected = KARPATHY_IMAGES.get(os.path.basename(os.path.normpath(folder)))
    if expected:
        missing = [split for split in expected if split not in {report.split for report in reports}]
        if missing:
            reports[0].warnings.append(f"{folder}: no {', '.join(missing)} split (the paper's splits are "
                                       f"{', '.join(expected)})")
    return reports


def inspect_split(folder, split):
    """Pass 1 for one split: both files present and readable, the .npy header and size."""
    report = SplitReport(folder, split)
    for path in (report.images_path, report.captions_path):
        if not os.path.isfile(path):
            report.errors.append(f"{path}: split file not found (each split needs {split}{IMAGES_SUFFIX} "
                                 f"and {split}{CAPTIONS_SUFFIX})")
        elif not os.access(path, os.R_OK):
            report.errors.append(f"{path}: not readable (permission denied)")
    try:
        check_split_complete(report.images_path)
    except XDimError as error:
        report.errors.append(str(error))
    if not report.errors:
        inspect_features(report)
    return report


def inspect_features(report):
    """Read the .npy header of `report.images_path` and check shape, dtype, order and file size."""
    path = report.images_path
    try:
        with open(path, "rb") as f:
            shape, fortran_order, dtype = read_npy_header(f)
            report.data_offset = f.tell()
    except (ValueError, OSError, EOFError) as error:
        report.errors.append(f"{path}: not a .npy file ({first_line(error)})")
        return
    report.shape, report.dtype = tuple(shape), dtype
    if len(shape) != 3:
        report.errors.append(f"{path}: a {len(shape)}-D array of shape {report.shape}, expected 3-D "
                             f"(images, regions, features) such as (n, 36, 2048)")
    elif dtype.kind != "f":
        report.errors.append(f"{path}: expected a 3-D float array (images, regions, features), got shape "
                             f"{report.shape} dtype {dtype} (convert with np.save(path, array.astype(np.float32)))")
        return  # an object array's size says nothing: its data is pickled
    elif shape[0] == 0 or shape[1] == 0:
        report.errors.append(f"{path}: holds no region features (shape {report.shape})")
    elif fortran_order:
        report.errors.append(f"{path}: stored in Fortran order, which reads one image at a time very slowly; "
                             "save it again with np.save(path, np.ascontiguousarray(array))")
    elif shape[1:] != PAPER_REGIONS_FEATURES:
        report.warnings.append(f"{path}: {shape[1]} regions of {shape[2]} features per image, the paper's "
                               f"BUTD features are {PAPER_REGIONS_FEATURES[0]} x {PAPER_REGIONS_FEATURES[1]}")
    if dtype.kind == "f" and dtype.itemsize > PAPER_DTYPE.itemsize:
        report.warnings.append(f"{path}: {dtype} features are rounded to float32 when read (float32 or float16 "
                               "files hold the same and take less disk)")
    expected = report.data_offset + math.prod(shape) * dtype.itemsize
    actual = os.path.getsize(path)
    if actual < expected:
        complete = (actual - report.data_offset) // max(1, math.prod(shape[1:]) * dtype.itemsize)
        report.errors.append(f"{path}: truncated: {actual} bytes, its header announces {expected} "
                             f"(only {max(0, complete)} of {shape[0]} images complete); download it again")
    elif actual > expected:
        report.errors.append(f"{path}: {actual - expected} bytes after the end of the array its header "
                             "announces; the file is damaged, download it again")


# ---------------------------------------------------------------- pass 2: every byte once

def check_features(report, progress):
    """Pass 2 over the features: read the file once in chunks of whole images into one buffer and
    record the first image holding NaN or inf. `progress` (tqdm) advances by the bytes read."""
    n_images, image_shape = report.shape[0], report.shape[1:]
    image_bytes = max(1, math.prod(image_shape) * report.dtype.itemsize)
    buffer = np.empty((max(1, CHUNK_BYTES // image_bytes),) + image_shape, dtype=report.dtype)
    raw = memoryview(buffer).cast("B")
    with open(report.images_path, "rb", buffering=0) as f:
        f.seek(report.data_offset)
        for start in range(0, n_images, len(buffer)):
            count = min(len(buffer), n_images - start)
            read_exactly(f, raw[:count * image_bytes], report.images_path)
            progress.update(count * image_bytes)
            # as training reads them: float32 in this machine's byte order (float64 beyond float32's range is inf)
            with np.errstate(over="ignore"):
                row = precomp.first_non_finite(torch.from_numpy(buffer[:count].astype(np.float32)))
            if row is not None:
                report.errors.append(precomp.non_finite_problem(report.images_path, start + row))
                progress.update((n_images - start - count) * image_bytes)
                return


def read_exactly(f, view, path):
    """Fill the writable byte memoryview `view` from raw file `f`; XDimError if the file ends first."""
    filled = 0
    while filled < len(view):
        got = f.readinto(view[filled:])
        if not got:
            raise XDimError(f"{path}: ended while reading (did it shrink during the check?)")
        filled += got


def check_captions(report, progress):
    """Pass 2 over the captions: decode each line with precomp's rules, then check the count."""
    count = 0
    try:
        for _ in precomp.iter_captions(report.captions_path):
            count += 1
    except XDimError as error:
        report.errors.append(first_line(error))
        return
    finally:
        progress.update(os.path.getsize(report.captions_path))
    report.n_captions = count
    if report.n_images is None:
        return
    try:
        per_image = precomp.captions_per_image(count, report.n_images, report.captions_path, report.images_path)
    except XDimError as error:
        report.errors.append(first_line(error))
        return
    if per_image != PAPER_CAPTIONS_PER_IMAGE:
        report.warnings.append(f"{report.captions_path}: {per_image} caption per image, the paper's splits "
                               f"have {PAPER_CAPTIONS_PER_IMAGE}")


def compare_counts(report):
    """Warn when a split of f30k_precomp or coco_precomp has another image count than the paper's."""
    expected = KARPATHY_IMAGES.get(os.path.basename(os.path.normpath(report.folder)), {}).get(report.split)
    if expected is not None and report.n_images is not None and report.n_images != expected:
        report.warnings.append(f"{report.images_path}: {report.n_images} images, the Karpathy {report.split} "
                               f"split has {expected}: fine for your own data, not for the paper's figures")


def pass_two_bytes(report):
    """Bytes pass 2 reads for `report` (its progress bar total)."""
    return os.path.getsize(report.captions_path) + os.path.getsize(report.images_path) - report.data_offset


def check_folders(data_path, data_names=None, progress=True):
    """Check every split of the chosen folders -> list of SplitReport.

    Pass 2 (the long one) runs only when pass 1 found no error anywhere, so those errors
    come before any long work.
    """
    reports = [report for folder in data_folders(data_path, data_names) for report in inspect_folder(folder)]
    if any(report.errors for report in reports):
        return reports
    with tqdm(total=sum(pass_two_bytes(report) for report in reports), unit="B", unit_scale=True,
              desc="check", disable=not progress) as bar:
        for report in reports:
            check_captions(report, bar)
            check_features(report, bar)
            compare_counts(report)
    return reports


def human_bytes(n):
    """1234567 -> '1.2 MB' (powers of 1000, as `ls -lh --si`)."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def report_table(reports):
    """One line per split: split, images, captions, size on disk, status."""
    width = max([len(report.name) for report in reports] + [len("split")])
    head = f"{'split':{width}} | {'images':>7} | {'captions':>8} | {'size':>9} | status"
    lines = [head, "-" * len(head)]
    for report in reports:
        images = "?" if report.n_images is None else str(report.n_images)
        captions = "?" if report.n_captions is None else str(report.n_captions)
        lines.append(f"{report.name:{width}} | {images:>7} | {captions:>8} | "
                     f"{human_bytes(report.disk_bytes):>9} | {report.status}")
    return "\n".join(lines)


# ---------------------------------------------------------------- the raw-image layout

# The Karpathy split sizes by dataset (the raw-image layout names datasets f30k, coco, ...).
KARPATHY_BY_DATASET = {"coco": KARPATHY_IMAGES["coco_precomp"], "f30k": KARPATHY_IMAGES["f30k_precomp"]}
IMAGE_SPLIT_SUFFIXES = ("_caps.txt", "_ids.txt")
LISTED_BAD_IMAGES = 10
CONVERSION_NOTES = {
    "grey": "grey images, read as three equal channels",
    "alpha": "images with transparency, read without it (the stored colours, no background blended in)",
    "cmyk": "CMYK images, converted to RGB by Pillow's plain formula (no colour profile)",
}


@dataclass
class ImageSplitReport:
    """What the check found for split `split` of a raw-image dataset folder.

    image_paths: the image file of each image (empty when pass 1 failed); disk_bytes: the
    text files' and the images' bytes, known after pass 2.
    """
    data_path: str
    data_name: str
    split: str
    n_images: int = None
    n_captions: int = None
    image_paths: list = field(default_factory=list)
    disk_bytes: int = 0
    errors: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    @property
    def name(self):
        return f"{self.data_name}/{self.split}"

    @property
    def status(self):
        return report_status(self)


def is_image_dataset(data_path):
    """Whether `data_path` is a dataset folder of the raw-image layout (it holds id_mapping.json)."""
    return os.path.isfile(os.path.join(data_path, images.MAPPING_FILE))


def image_split_names(data_path):
    """Splits with a captions or an ids file in `data_path/precomp`, the paper's four first."""
    folder = os.path.join(data_path, images.CAPTIONS_FOLDER)
    if not os.path.isdir(folder):
        return []
    names = {entry[:-len(suffix)] for entry in os.listdir(folder)
             for suffix in IMAGE_SPLIT_SUFFIXES if entry.endswith(suffix) and len(entry) > len(suffix)}
    known = [split for split in ("train", "dev", "test", "testall") if split in names]
    return known + sorted(names - set(known))


def inspect_image_split(data_path, data_name, split, image_root):
    """Pass 1 for one split: text files, counts, ids in the mapping, every file present."""
    report = ImageSplitReport(data_path, data_name, split)
    try:
        split_files = images.read_image_split(data_path, data_name, split, image_root)
    except XDimError as error:
        report.errors.append(first_line(error))
        return report
    report.n_images, report.n_captions = split_files.n_images, split_files.n_captions
    report.image_paths = split_files.image_paths
    report.disk_bytes = sum(os.path.getsize(path) for path in (split_files.captions_path, split_files.ids_path))
    if split_files.captions_per_image != PAPER_CAPTIONS_PER_IMAGE:
        report.warnings.append(f"{split_files.captions_path}: 1 caption per image, the paper's splits have "
                               f"{PAPER_CAPTIONS_PER_IMAGE}")
    expected = next((sizes.get(split) for name, sizes in KARPATHY_BY_DATASET.items()
                     if name in data_name.lower()), None)
    if expected is not None and report.n_images != expected:
        report.warnings.append(f"{split_files.ids_path}: {report.n_images} images, the Karpathy {split} split "
                               f"has {expected}: fine for your own data, not for the paper's figures")
    return report


def decode_check(path):
    """Decode one image file as training would -> (bytes, conversion or None, error line or None)."""
    try:
        _, conversion = images.read_rgb(path)
    except XDimError as error:
        return os.path.getsize(path), None, first_line(error)
    return os.path.getsize(path), conversion, None


def decoded_files(paths, progress, workers):
    """{path: decode_check(path)} for distinct `paths`, each decoded once, in `workers` processes (0: here)."""
    with tqdm(total=len(paths), unit="img", desc="decode", disable=not progress) as bar:
        if workers <= 0:
            results = {}
            for path in paths:
                results[path] = decode_check(path)
                bar.update()
            return results
        with ProcessPoolExecutor(workers) as pool:
            results = {}
            for path, result in zip(paths, pool.map(decode_check, paths, chunksize=32)):
                results[path] = result
                bar.update()
            return results


def record_decoding(report, results, owned):
    """Put pass 2's findings for `report`'s images into it: errors of the files it `owned` (the
    first split listing a file reports it), one warning per kind of conversion, image bytes."""
    bad, converted = [], {}
    for path in dict.fromkeys(report.image_paths):
        size, conversion, error = results[path]
        report.disk_bytes += size
        if error and path in owned:
            bad.append(error)
        if conversion:
            converted.setdefault(conversion, []).append(path)
    report.errors += bad[:LISTED_BAD_IMAGES]
    if len(bad) > LISTED_BAD_IMAGES:
        report.errors.append(f"{report.name}: {len(bad) - LISTED_BAD_IMAGES} more image files cannot be decoded")
    for conversion, paths in converted.items():
        report.warnings.append(f"{report.name}: {len(paths)} {CONVERSION_NOTES[conversion]} (first: {paths[0]})")


def check_image_dataset(data_path, data_name=None, image_root=None, progress=True, workers=0):
    """Check every split of a raw-image dataset folder -> list of ImageSplitReport.

    `data_name` chooses the image folder (images/ for a name containing coco, else
    flickr30k-images/) unless `image_root` is given; by default the folder's own name.
    Pass 2 (decoding) runs only when pass 1 found no error anywhere.
    """
    data_name = data_name or os.path.basename(os.path.normpath(data_path))
    splits = image_split_names(data_path)
    if not splits:
        raise XDimError(f"{os.path.join(data_path, images.CAPTIONS_FOLDER)}: holds no {{split}}_caps.txt / "
                        "{split}_ids.txt files")
    reports = [inspect_image_split(data_path, data_name, split, image_root) for split in splits]
    if any(report.errors for report in reports):
        return reports
    owner = {}
    for report in reports:
        for path in report.image_paths:
            owner.setdefault(path, report.split)
    results = decoded_files(list(owner), progress, workers)
    for report in reports:
        record_decoding(report, results, {path for path, split in owner.items() if split == report.split})
    return reports
