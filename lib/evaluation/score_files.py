"""Score matrices on disk: our float32 .npy files, the official code's pickled dicts, ensembles."""
import io
import logging
import os
import pickle
import sys

import numpy as np

from lib.errors import XDimError
from lib.formats.atomic import atomic_file, output_target
from lib.formats.npy import read_npy_header

logger = logging.getLogger("lib.evaluation")

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
        dtype = read_npy_header(f)[2]
        if not dtype.hasobject:
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
    data = data.astype(np.float32, copy=False)  # a float32 file is not copied: 500 MB for COCO 5K
    check_finite_scores(data, path)
    return data


def check_finite_scores(sims, source):
    """XDimError naming `source` and the first (image, caption) whose score is NaN or infinite."""
    if not np.isfinite(sims).all():
        image, caption = np.argwhere(~np.isfinite(sims))[0]
        raise XDimError(f"{source}: score matrix holds NaN or infinite values "
                        f"(first at image {image}, caption {caption})")


def warn_constant_scores(sims, source, stream=None):
    """Say on stderr when every score of `sims` is the same (e.g. 0 for features scaled by 1e30): the
    recalls then only count ties, which is no measure of the model. -> True when it warned."""
    if sims.size and float(sims.max()) == float(sims.min()):
        print(f"warning: {source}: every score is {float(sims.max()):g}, so the recalls below count only "
              f"ties; check the features' scale (python check_data.py; region features are usually "
              f"of order 1)", file=stream or sys.stderr)
        return True
    return False


def score_file_path(path):
    """The file --save_sims `path` writes: `path` + '.npy' unless it ends so (what np.save(path) always
    did, kept for existing command lines) or names a device or FIFO (/dev/null), written as it is."""
    path = os.fspath(path)
    return path if path.endswith(".npy") or output_target(path)[1] else path + ".npy"


def save_score_file(sims, path):
    """Write sims as a plain float32 .npy (n_img, n_cap), loadable with allow_pickle=False, atomically:
    on any failure (a full disk is one XDimError line) an existing file at `path` is left intact."""
    sims, path = np.asarray(sims, dtype=np.float32), score_file_path(path)
    with atomic_file(path, size=sims.nbytes) as f:
        np.save(f, sims, allow_pickle=False)


def warn_repeated_files(paths, option="--ensemble"):
    """Warn for each file that `paths` names more than once (it weighs that many times in the
    average) -> the repeated paths, as first given."""
    spellings = {}
    for path in paths:
        spellings.setdefault(os.path.realpath(path), []).append(path)
    repeated = [names for names in spellings.values() if len(names) > 1]
    for names in repeated:
        logger.warning("warning: %s names %s %d times: it counts that many times in the average",
                       option, names[0], len(names))
    return [names[0] for names in repeated]


def check_same_shape(shapes, sources):
    """XDimError naming the first source whose (n_img, n_cap) shape differs from the first one's."""
    for shape, source in zip(shapes[1:], sources[1:]):
        if tuple(shape) != tuple(shapes[0]):
            raise XDimError(f"{source}: score matrix of shape {tuple(shape)} cannot be ensembled with "
                            f"{sources[0]} of shape {tuple(shapes[0])}")


def ensemble_sims(matrices, sources=None):
    """Average score matrices of equal shape (each (n_img, n_cap)) -> float32.

    `sources` (file names) name the matrices in the error for a shape mismatch.
    """
    sources = sources or [f"score matrix {k}" for k in range(len(matrices))]
    check_same_shape([m.shape for m in matrices], sources)
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
