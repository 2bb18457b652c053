from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from audioset_batch.errors import InputFileError, LimitExceededError
from audioset_batch.hdf5_reader import (
    CorruptFileError,
    EmbeddingFile,
    EmptyDatasetError,
    EmptyFileError,
    LayoutError,
    Limits,
    MissingDatasetError,
    NonFiniteError,
    NotHDF5Error,
    TruncatedFileError,
)
from tests.helpers import write_h5


def test_reads_all_clips_in_order_across_chunks(tmp_path: Path) -> None:
    path = write_h5(tmp_path / "a.h5", clips=23, classes=4)
    with h5py.File(path) as f:
        expected = f["x"][:]
    with EmbeddingFile(path) as data:
        assert (data.clips, data.frames, data.classes) == (23, 10, 4)
        chunks = list(data.chunks(5))
    assert [c.start for c in chunks] == [0, 5, 10, 15, 20]
    np.testing.assert_array_equal(np.concatenate([c.x for c in chunks]), expected)
    assert chunks[0].video_ids is not None and chunks[0].video_ids[1] == "vid000_0001"
    assert chunks[4].start_times is not None and chunks[4].start_times[-1] == 220.0


def test_truncated_file(tmp_path: Path) -> None:
    path = write_h5(tmp_path / "t.h5", clips=200)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises((TruncatedFileError, CorruptFileError)) as info, EmbeddingFile(path) as f:
        list(f.chunks(1000))
    assert isinstance(info.value, InputFileError)
    assert "truncated" in str(info.value) or "clips" in str(info.value)


def test_non_hdf5_bytes(tmp_path: Path) -> None:
    path = tmp_path / "junk.h5"
    path.write_bytes(b"this is not hdf5 at all" * 100)
    with pytest.raises(NotHDF5Error, match="not an HDF5 file"):
        EmbeddingFile(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.h5"
    path.write_bytes(b"")
    with pytest.raises(EmptyFileError, match="0 bytes"):
        EmbeddingFile(path)


def _write(path: Path, **datasets: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        for name, value in datasets.items():
            f.create_dataset(name, data=value)
    return path


def test_missing_x(tmp_path: Path) -> None:
    path = _write(tmp_path / "m.h5", y=np.zeros((3, 5)))
    with pytest.raises(MissingDatasetError, match="'x' is missing"):
        EmbeddingFile(path)


def test_wrong_rank(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.h5", x=np.zeros((3, 128), dtype=np.uint8))
    with pytest.raises(LayoutError, match="'x' has rank 2"):
        EmbeddingFile(path)


def test_wrong_width(tmp_path: Path) -> None:
    path = _write(tmp_path / "w.h5", x=np.zeros((3, 10, 64), dtype=np.uint8))
    with pytest.raises(LayoutError, match="'x' has width 64"):
        EmbeddingFile(path)


def test_zero_clips(tmp_path: Path) -> None:
    path = _write(tmp_path / "z.h5", x=np.zeros((0, 10, 128), dtype=np.uint8))
    with pytest.raises(EmptyDatasetError, match="no clips"):
        EmbeddingFile(path)


def test_video_id_list_wrong_length(tmp_path: Path) -> None:
    path = _write(tmp_path / "v.h5", x=np.zeros((3, 10, 128), dtype=np.uint8), video_id_list=np.array([b"a", b"b"]))
    with pytest.raises(LayoutError, match="'video_id_list' has shape \\(2,\\)"):
        EmbeddingFile(path)


def test_video_id_list_wrong_type(tmp_path: Path) -> None:
    path = _write(tmp_path / "v.h5", x=np.zeros((2, 10, 128), dtype=np.uint8), video_id_list=np.array([1.5, 2.5]))
    with pytest.raises(LayoutError, match="'video_id_list' has dtype float64"):
        EmbeddingFile(path)


def test_y_wrong_clip_count(tmp_path: Path) -> None:
    path = _write(tmp_path / "y.h5", x=np.zeros((3, 10, 128), dtype=np.uint8), y=np.zeros((4, 5)))
    with pytest.raises(LayoutError, match="'y' has shape \\(4, 5\\)"):
        EmbeddingFile(path)


def test_integer_dtype_other_than_uint8_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "i.h5", x=np.zeros((3, 10, 128), dtype=np.int32))
    with pytest.raises(LayoutError, match="dtype int32"):
        EmbeddingFile(path)


def test_float_input_with_nan_is_refused(tmp_path: Path) -> None:
    x = np.zeros((4, 10, 128), dtype=np.float32)
    x[2, 3, 4] = np.nan
    path = _write(tmp_path / "n.h5", x=x)
    with EmbeddingFile(path) as f, pytest.raises(NonFiniteError, match="first at clip 2"):
        list(f.chunks(10))


def test_clip_limit(tmp_path: Path) -> None:
    path = write_h5(tmp_path / "big.h5", clips=20)
    with pytest.raises(LimitExceededError, match="AUDIOSET_MAX_CLIPS=10"):
        EmbeddingFile(path, Limits(max_clips=10))


def test_compression_bomb_chunks_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", shape=(4000, 10, 128), dtype=np.uint8, chunks=(4000, 10, 128), compression="gzip")
    assert path.stat().st_size < 100_000
    with pytest.raises(LimitExceededError, match="AUDIOSET_MAX_CHUNK_BYTES"):
        EmbeddingFile(path, Limits(max_chunk_bytes=1024 * 1024))


def test_declared_shape_larger_than_file(tmp_path: Path) -> None:
    path = write_h5(tmp_path / "short.h5", clips=500, video_ids=False)
    size = path.stat().st_size
    with path.open("r+b") as fh:
        fh.truncate(size - 300_000)
    with pytest.raises((TruncatedFileError, CorruptFileError)), EmbeddingFile(path) as f:
        list(f.chunks(100))
