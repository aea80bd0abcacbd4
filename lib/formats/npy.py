"""The header of a .npy file, read without loading its data (numpy.lib.format)."""
import numpy as np

# Version 3.0 differs from 2.0 only in allowing utf-8 field names, which float arrays never have.
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0,
                   (3, 0): np.lib.format.read_array_header_2_0}


def read_npy_header(f):
    """Read the magic and header of the .npy opened as binary `f`, leaving `f` at the first data byte.

    -> (shape tuple, fortran_order bool, numpy dtype). ValueError when `f` does not start with a
    .npy header of a known version.
    """
    version = np.lib.format.read_magic(f)
    if version not in _HEADER_READERS:
        raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
    return _HEADER_READERS[version](f)
