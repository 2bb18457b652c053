from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from audioset_batch.errors import InputFileError, LimitExceededError
from audioset_batch.scoring.hdf5_reader import (
    HDF5_PREFIX_VARIABLES,
    CorruptFileError,
    EmbeddingFile,
    EmptyDatasetError,
    EmptyFileError,
    ExternalLinkError,
    ExternalStorageError,
    FrameCountError,
    LayoutError,
    Limits,
    MissingDatasetError,
    NonFiniteError,
    NotHDF5Error,
    OversizeFieldError,
    SoftLinkError,
    SparseDatasetError,
    TruncatedFileError,
    VirtualDatasetError,
    pin_external_prefixes,
)
from audioset_batch.scoring.vlen_lengths import vlen_lengths
from tests.helpers import write_h5, write_shared_id_bomb


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


def test_a_keras_checkpoint_is_named_as_one(tmp_path: Path) -> None:
    """`score runs/` walks into training checkpoints; the error says what the file is."""
    import keras

    net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    net.save_weights(tmp_path / "best.weights.h5")
    with pytest.raises(MissingDatasetError, match=r"'x' is missing .*; this is a Keras weights file, not embeddings"):
        EmbeddingFile(tmp_path / "best.weights.h5")
    with pytest.raises(MissingDatasetError, match=r"'x' is missing \(datasets present: \['y'\]\)$"):
        EmbeddingFile(_write(tmp_path / "m.h5", y=np.zeros((3, 5))))


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


# --- files whose bytes do not live in the file itself (hostile uploads) ---------------------------------


def _secret_file(tmp_path: Path) -> Path:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"AUDIOSET_COS_SECRET_ACCESS_KEY=hunter2\n" * 100)
    return secret


def test_external_raw_storage_is_refused_before_any_byte_is_read(tmp_path: Path) -> None:
    secret = _secret_file(tmp_path)
    path = tmp_path / "ext.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", shape=(3, 10, 128), dtype=np.uint8, external=[(str(secret), 0, 3 * 1280)])
    with pytest.raises(ExternalStorageError, match="dataset 'x' uses HDF5 external storage"):
        EmbeddingFile(path)


def test_external_storage_of_video_ids_is_refused(tmp_path: Path) -> None:
    """The /proc/self/environ case: ids read from another file would carry its bytes into the results."""
    secret = _secret_file(tmp_path)
    path = tmp_path / "ids.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros((3, 10, 128), dtype=np.uint8)
        f.create_dataset("video_id_list", shape=(3,), dtype="S40", external=[(str(secret), 0, 120)])
    with pytest.raises(ExternalStorageError, match="video_id_list"):
        EmbeddingFile(path)


def test_virtual_dataset_is_refused(tmp_path: Path) -> None:
    other = write_h5(tmp_path / "other-tenant.h5", clips=4)
    layout = h5py.VirtualLayout(shape=(4, 10, 128), dtype=np.uint8)
    layout[:] = h5py.VirtualSource(str(other), "x", shape=(4, 10, 128))
    path = tmp_path / "vds.h5"
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset("x", layout)
    with pytest.raises(VirtualDatasetError, match="virtual dataset"):
        EmbeddingFile(path)


def test_external_link_is_refused(tmp_path: Path) -> None:
    other = write_h5(tmp_path / "other-tenant.h5", clips=4)
    path = tmp_path / "link.h5"
    with h5py.File(path, "w") as f:
        f["x"] = h5py.ExternalLink(str(other), "/x")
    with pytest.raises(ExternalLinkError, match="external link"):
        EmbeddingFile(path)


def test_soft_link_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "soft.h5"
    with h5py.File(path, "w") as f:
        f["data/embeddings"] = np.zeros((3, 10, 128), dtype=np.uint8)
        f["x"] = h5py.SoftLink("/data/embeddings")
    with pytest.raises(SoftLinkError, match="soft link to '/data/embeddings'"):
        EmbeddingFile(path)


@pytest.mark.parametrize(
    "error", [ExternalStorageError, VirtualDatasetError, ExternalLinkError, SoftLinkError, SparseDatasetError]
)
def test_each_refusal_is_an_input_error(error: type[Exception]) -> None:
    assert issubclass(error, InputFileError)


def test_declared_but_never_written_chunks_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "sparse.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", shape=(9_000_000, 10, 128), dtype=np.uint8, chunks=(64, 10, 128), compression="gzip")
    assert path.stat().st_size < 10_000
    with pytest.raises(SparseDatasetError, match="never written"):
        EmbeddingFile(path)


def test_compressed_real_data_is_not_mistaken_for_sparse(tmp_path: Path) -> None:
    path = tmp_path / "zeros.h5"
    with h5py.File(path, "w") as f:  # all zeros: gzip's best case, still stored
        f.create_dataset("x", data=np.zeros((4000, 10, 128), dtype=np.uint8), chunks=(500, 10, 128), compression="gzip")
    with EmbeddingFile(path) as data:
        assert sum(len(c.x) for c in data.chunks(1000)) == 4000


# --- memory follows what the file holds ----------------------------------------------------------------


@pytest.mark.parametrize("frames", [5, 1000])
def test_frames_must_match_the_model(tmp_path: Path, frames: int) -> None:
    path = write_h5(tmp_path / "f.h5", clips=2, frames=frames)
    with pytest.raises(FrameCountError, match=f"has {frames} frames per clip .* the model takes 10"):
        EmbeddingFile(path, frames=10)


def test_huge_declared_frame_count_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "frames.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", shape=(1, 50_000_000, 128), dtype=np.uint8, chunks=(1, 1000, 128), compression="gzip")
    with pytest.raises(FrameCountError):
        EmbeddingFile(path, frames=10)


def test_long_fixed_length_ids_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "ids.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros((3, 10, 128), dtype=np.uint8)
        f.create_dataset("video_id_list", data=np.array([b"a" * 1_000_000] * 3), compression="gzip")
    with pytest.raises(OversizeFieldError, match="1000000-byte ids"):
        EmbeddingFile(path)


def test_wide_labels_are_refused_and_skipped_labels_are_never_read(tmp_path: Path) -> None:
    path = tmp_path / "y.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros((3, 10, 128), dtype=np.uint8)
        f.create_dataset("y", data=np.ones((3, 5_000_000), dtype=np.uint8), chunks=(1, 100_000), compression="gzip")
    assert path.stat().st_size < 200_000
    with pytest.raises(OversizeFieldError, match="5000000 classes"):
        EmbeddingFile(path)
    with EmbeddingFile(path, Limits(max_classes=10_000_000)) as data:
        data.skip_labels()
        assert [c.y for c in data.chunks(100)] == [None]


def test_one_read_stays_within_the_read_budget(tmp_path: Path) -> None:
    path = write_h5(tmp_path / "a.h5", clips=50, classes=527)
    with EmbeddingFile(path) as data:
        per_clip = data.clip_bytes()
    assert per_clip > 1280 + 527
    with EmbeddingFile(path, Limits(max_read_bytes=10 * per_clip)) as data:
        sizes = [len(c.x) for c in data.chunks(8192)]
    assert sizes == [10] * 5


def test_float_values_beyond_range_are_refused(tmp_path: Path) -> None:
    x = np.zeros((3, 10, 128), dtype=np.float64)
    x[1, 0, 0] = 1e300
    path = _write(tmp_path / "big.h5", x=x)
    with EmbeddingFile(path) as f, pytest.raises(NonFiniteError, match=r"beyond ±10000 \(first at clip 1\)"):
        list(f.chunks(10))


def test_float_x_holding_uint8_codes_is_refused_not_scored_undequantised(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.5, (4, 10, 128)).astype(np.float32)
    x[3] = rng.integers(0, 256, (10, 128))  # a clip converted with astype(float32) instead of (x - 128) / 128
    x[1] = 0  # zero padding is not codes
    path = _write(tmp_path / "codes.h5", x=x)
    with EmbeddingFile(path) as f, pytest.raises(LayoutError, match=r"holds 8-bit codes .*first at clip 3\)"):
        list(f.chunks(10))
    x[3] = rng.normal(0, 0.5, (10, 128))
    with EmbeddingFile(_write(tmp_path / "fine.h5", x=x)) as f:
        assert sum(len(c.x) for c in f.chunks(10)) == 4


def test_pinned_prefixes_point_at_an_empty_private_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in HDF5_PREFIX_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    folder = pin_external_prefixes()
    assert folder.is_dir() and not any(folder.iterdir())
    assert {os.environ[name] for name in HDF5_PREFIX_VARIABLES} == {str(folder)}
    assert pin_external_prefixes() == folder


def test_a_process_killed_with_kill_9_leaves_no_pinned_folder_behind(tmp_path: Path) -> None:
    """kill -9 skips the exit handler that removes the empty folder; the next process to start removes it."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    for name in HDF5_PREFIX_VARIABLES:
        env.pop(name, None)
    script = (
        "from audioset_batch.scoring.hdf5_reader import pin_external_prefixes as p; import os, signal; "
        "p(); os.kill(os.getpid(), signal.SIGKILL)"
    )
    subprocess.run([sys.executable, "-c", script], env=env, check=False)
    assert len(list(tmp_path.glob("audioset-hdf5-nothing-*"))) == 1  # what kill -9 leaves
    keep = tmp_path / "audioset-hdf5-nothing-1-live"  # pid 1 is alive: never touched
    keep.mkdir()
    survivor = "from audioset_batch.scoring.hdf5_reader import pin_external_prefixes as p; print(p())"
    mine = subprocess.run([sys.executable, "-c", survivor], env=env, capture_output=True, text=True, check=True)
    assert sorted(p.name for p in tmp_path.glob("audioset-hdf5-nothing-*")) == ["audioset-hdf5-nothing-1-live"]
    assert mine.stdout.strip().startswith(str(tmp_path / "audioset-hdf5-nothing-"))


@pytest.mark.parametrize("layout", ["contiguous", "chunked", "gzip-shuffle", "compact"])
def test_variable_length_ids_read_in_every_layout(tmp_path: Path, layout: str) -> None:
    path = tmp_path / "vlen.h5"
    ids = [f"clip-{i}-" + "x" * (i % 40) for i in range(300)]
    kwargs: dict[str, Any] = {
        "contiguous": {},
        "chunked": {"chunks": (64,)},
        "gzip-shuffle": {"chunks": (64,), "compression": "gzip", "shuffle": True},
        "compact": {},
    }[layout]
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros((300, 10, 128), dtype=np.uint8)
        if layout == "compact":
            space = h5py.h5s.create_simple((300,))
            plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            plist.set_layout(h5py.h5d.COMPACT)
            tid = h5py.h5t.py_create(h5py.string_dtype(), logical=True)
            h5py.h5d.create(f.id, b"video_id_list", tid, space, dcpl=plist)
            f["video_id_list"][:] = np.array(ids, dtype=object)
        else:
            f.create_dataset("video_id_list", data=np.array(ids, dtype=object), dtype=h5py.string_dtype(), **kwargs)
    with EmbeddingFile(path) as data:
        assert [i for c in data.chunks(50) for i in (c.video_ids or [])] == ids
        if layout != "compact":  # the stored lengths are read without decoding a single id
            assert list(vlen_lengths(data.video_ids, str(path), 10, 20)) == [len(i) for i in ids[10:20]]


@pytest.mark.parametrize("layout", ["contiguous", "chunked"])
def test_one_long_id_named_by_every_clip_is_refused_before_it_is_decoded(tmp_path: Path, layout: str) -> None:
    """50 references to one stored 4 MB id: 4 MB on disk, 200 MB decoded (the reader peaked at 2.3 GB)."""
    path = write_shared_id_bomb(tmp_path / "bomb.h5", clips=50, id_bytes=4_000_000, layout=layout)
    assert path.stat().st_size < 5_000_000
    with EmbeddingFile(path) as data, pytest.raises(OversizeFieldError, match="4000000-byte id at clip 0"):
        list(data.chunks(8192))


def test_long_variable_length_ids_are_refused_in_a_layout_whose_lengths_are_not_read(tmp_path: Path) -> None:
    path = tmp_path / "compact.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros((3, 10, 128), dtype=np.uint8)
        space = h5py.h5s.create_simple((3,))
        plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        plist.set_layout(h5py.h5d.COMPACT)
        tid = h5py.h5t.py_create(h5py.string_dtype(), logical=True)
        h5py.h5d.create(f.id, b"video_id_list", tid, space, dcpl=plist)
        f["video_id_list"][:] = np.array(["a", "b" * 2_000_000, "c"], dtype=object)
    with EmbeddingFile(path) as data, pytest.raises(OversizeFieldError, match="2000000-byte id at clip 1"):
        list(data.chunks(8192))
