"""Byte lengths of variable-length strings, read from their heap references without reading the strings.

A vlen string dataset stores, per element, a reference into the file's global heap: a 4-byte length, the heap
collection's address and an object index. Many references may name one stored string, so reading a slice can
decode far more bytes than the file holds (a 4 MB string named 200,000 times decodes to 800 GB). Reading the
lengths first lets the reader refuse an oversize id before decoding any of it.
"""

from __future__ import annotations

import zlib

import h5py
import numpy as np

# HDF5 filter ids (H5Zpublic.h) this reader can undo on a chunk of heap references.
_DEFLATE, _SHUFFLE, _FLETCHER32 = 1, 2, 3


def reference_size(file: h5py.File) -> int:
    """Bytes of one on-disk vlen reference: the length, the heap address (the file's offset size), the index."""
    offset_size, _length_size = file.id.get_create_plist().get_sizes()
    return 4 + int(offset_size) + 4


def vlen_lengths(ds: h5py.Dataset, path: str, start: int, stop: int) -> np.ndarray | None:
    """Stored byte length of each element in ``ds[start:stop]``, or None where the layout is not one read here
    (compact storage, an unknown filter): the caller then reads in slices small enough for the worst case."""
    element = reference_size(ds.file)
    plist = ds.id.get_create_plist()
    layout = plist.get_layout()
    if layout == h5py.h5d.CONTIGUOUS:
        offset = ds.id.get_offset()
        if offset is None:  # never written: every element is the fill value, an empty string
            return np.zeros(stop - start, dtype=np.int64)
        with open(path, "rb") as fh:
            fh.seek(offset + start * element)
            raw = fh.read((stop - start) * element)
        if len(raw) != (stop - start) * element:
            return None  # the file ends first: the ordinary read reports it
        return _lengths(raw, element)
    if layout != h5py.h5d.CHUNKED or ds.chunks is None:
        return None
    filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    if any(f not in (_DEFLATE, _SHUFFLE, _FLETCHER32) for f in filters):
        return None
    size = ds.chunks[0]
    parts = []
    for first in range(start - start % size, stop, size):
        count = min(size, ds.shape[0] - first)
        try:
            mask, data = ds.id.read_direct_chunk((first,))
        except (KeyError, OSError, RuntimeError):  # an unwritten chunk holds fill values
            parts.append(np.zeros(count, dtype=np.int64))
            continue
        unfiltered = _unfilter(bytes(data), filters, mask, size * element, element)
        if unfiltered is None or len(unfiltered) < count * element:
            return None
        parts.append(_lengths(unfiltered[: count * element], element))
    lengths = np.concatenate(parts)
    offset = start - (start - start % size)
    return lengths[offset : offset + stop - start]


def _lengths(raw: bytes, element: int) -> np.ndarray:
    return np.frombuffer(raw, dtype="<u4")[:: element // 4].astype(np.int64)


def _unfilter(data: bytes, filters: list[int], mask: int, expected: int, element: int) -> bytes | None:
    """Undo a chunk's filters, last applied first; a filter skipped for this chunk has its bit set in ``mask``."""
    for position in reversed(range(len(filters))):
        if mask & (1 << position):
            continue
        kind = filters[position]
        if kind == _FLETCHER32:
            data = data[:-4]
        elif kind == _DEFLATE:
            inflater = zlib.decompressobj()
            try:
                data = inflater.decompress(data, expected)  # never more than one chunk of references
            except zlib.error:
                return None
        elif kind == _SHUFFLE:
            if len(data) % element:
                return None
            data = np.frombuffer(data, dtype=np.uint8).reshape(element, -1).T.tobytes()
    return data
