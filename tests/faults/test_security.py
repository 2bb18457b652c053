"""Hostile input, end to end: files whose bytes live elsewhere, bombs of every field, wrong shapes.

Each file goes through a real worker (real Redis, the HTTP S3 endpoint) and must end with its own
error class in an ``.error.json``, while the good files around it are scored, and no byte of the
worker's secrets reaches a result.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import orjson
import pytest

from audioset_batch.jobs.factory import open_job_store
from audioset_batch.storage.cos_store import CosStore
from tests.conftest import Stack, WorkerProcess
from tests.faults.conftest import check, child_pids, tally
from tests.faults.test_faults import run_job
from tests.helpers import wait_job, write_h5, write_shared_id_bomb

pytestmark = pytest.mark.integration


def hostile_files(directory: Path, secret_path: Path) -> dict[str, str]:
    """Each hostile file (in upload order) and the error class it must produce."""
    directory.mkdir(parents=True, exist_ok=True)
    other = write_h5(directory.parent / "other-tenant.h5", clips=4)
    expected: dict[str, str] = {}

    def h5(name: str) -> h5py.File:
        return h5py.File(directory / name, "w")

    with h5("environ.h5") as f:  # ids from the worker's own environment
        f["x"] = np.zeros((3, 10, 128), dtype=np.uint8)
        f.create_dataset("video_id_list", shape=(3,), dtype="S64", external=[("/proc/self/environ", 0, 192)])
    expected["environ.h5"] = "ExternalStorageError"
    with h5("external.h5") as f:  # embeddings from another file on the worker's disk
        f.create_dataset("x", shape=(3, 10, 128), dtype=np.uint8, external=[(str(secret_path), 0, 3 * 1280)])
    expected["external.h5"] = "ExternalStorageError"
    layout = h5py.VirtualLayout(shape=(4, 10, 128), dtype=np.uint8)
    layout[:] = h5py.VirtualSource(str(other), "x", shape=(4, 10, 128))
    with h5("virtual.h5") as f:
        f.create_virtual_dataset("x", layout)
    expected["virtual.h5"] = "VirtualDatasetError"
    with h5("extlink.h5") as f:
        f["x"] = h5py.ExternalLink(str(other), "/x")
    expected["extlink.h5"] = "ExternalLinkError"
    with h5("softlink.h5") as f:
        f["elsewhere"] = np.zeros((3, 10, 128), dtype=np.uint8)
        f["x"] = h5py.SoftLink("/elsewhere")
    expected["softlink.h5"] = "SoftLinkError"
    with h5("sparse.h5") as f:  # 1.4 KB declaring 9 M clips, never written
        f.create_dataset("x", shape=(9_000_000, 10, 128), dtype=np.uint8, chunks=(64, 10, 128), compression="gzip")
    expected["sparse.h5"] = "SparseDatasetError"
    # 5 or 1,000 frames per clip are recordings now, scored as windows; 50 M frames declared in a few KB are not
    with h5("frames50m.h5") as f:
        f.create_dataset("x", shape=(1, 50_000_000, 128), dtype=np.uint8, chunks=(1, 1000, 128), compression="gzip")
    expected["frames50m.h5"] = "LimitExceededError"
    with h5("recording50m.h5") as f:  # the same as one rank-2 recording
        f.create_dataset("x", shape=(50_000_000, 128), dtype=np.uint8, chunks=(1000, 128), compression="gzip")
    expected["recording50m.h5"] = "LimitExceededError"
    with h5("ids.h5") as f:
        f["x"] = np.zeros((3, 10, 128), dtype=np.uint8)
        f.create_dataset("video_id_list", data=np.array([b"i" * 1_000_000] * 3), compression="gzip")
    expected["ids.h5"] = "OversizeFieldError"
    with h5("wide_y.h5") as f:
        f["x"] = np.zeros((3, 10, 128), dtype=np.uint8)
        f.create_dataset("y", data=np.ones((3, 5_000_000), dtype=np.uint8), chunks=(1, 100_000), compression="gzip")
    expected["wide_y.h5"] = "OversizeFieldError"
    with h5("vlen_ids.h5") as f:  # variable-length ids: the width check never saw them (6 MB of results)
        f["x"] = np.zeros((3, 10, 128), dtype=np.uint8)
        f.create_dataset(
            "video_id_list", data=np.array([b"i" * 2_000_000] * 3, dtype=object), dtype=h5py.string_dtype()
        )
    expected["vlen_ids.h5"] = "OversizeFieldError"
    write_shared_id_bomb(directory / "shared_id.h5", clips=50, id_bytes=4_000_000)  # 4 MB stored, 200 MB decoded
    expected["shared_id.h5"] = "OversizeFieldError"
    with h5("zeros.h5") as f:  # 100,000 zero clips in about 150 KB: 50 MB of results
        f.create_dataset("x", data=np.zeros((100_000, 10, 128), np.uint8), chunks=(4096, 10, 128), compression="gzip")
    expected["zeros.h5"] = "LimitExceededError"
    with h5("huge_floats.h5") as f:
        f["x"] = np.full((3, 10, 128), 1e300)
    expected["huge_floats.h5"] = "NonFiniteError"
    return expected


def test_hostile_files_are_refused_and_never_take_a_good_file_down(
    stack: Stack, worker: WorkerProcess, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"SECRET-OF-ANOTHER-TENANT " * 200)
    expected = hostile_files(tmp_path / "hostile", secret)
    store = CosStore(stack.settings())
    inputs: dict[str, int] = {}
    for i, name in enumerate(expected):  # a good file after every hostile one
        store.upload_file(tmp_path / "hostile" / name, stack.input_bucket, f"hostile/{name}")
        good = write_h5(tmp_path / "good" / f"{i}.h5", clips=3, seed=i)
        store.upload_file(good, stack.input_bucket, f"hostile/good{i:02d}.h5")
        inputs[f"hostile/{name}"] = 1
        inputs[f"hostile/good{i:02d}.h5"] = 3
    status = wait_job(open_job_store(stack.settings().effective_state_url), run_job(stack, "hostile"), 240)
    assert (status.failed, status.scored) == (len(expected), len(expected))
    for name, error in expected.items():
        record = orjson.loads(
            store.get_bytes(stack.results_bucket, f"predictions/{stack.input_bucket}/hostile/{name}.error.json") or b""
        )
        assert record["error"] == error, (name, record)
        assert f"hostile/{name}" in worker.text()
    results = (
        b"".join(
            store.get_bytes(stack.results_bucket, f"predictions/{stack.input_bucket}/{key}.jsonl") or b""
            for key in inputs
        )
        + worker.text().encode()
    )
    for forbidden in (b"SECRET-OF-ANOTHER-TENANT", stack.env["AUDIOSET_COS_SECRET_ACCESS_KEY"].encode()):
        assert forbidden not in results
    # memory follows what a file stores: the worker child's peak over the whole job (the bombs took it to 2.6-6.5 GB)
    children = child_pids(worker.process.pid)
    peak_mb = max(int(Path(f"/proc/{pid}/status").read_text().split("VmHWM:")[1].split()[0]) for pid in children) / 1024
    assert check(
        "peak RSS of the worker child over every bomb", "< 1500 MB", "< 1500 MB" if peak_mb < 1500 else peak_mb
    ).ok
    row = tally(stack, "hostile HDF5 (external, virtual, links, bombs)", inputs)
    assert (row.errored, row.scored, row.lost, row.duplicated) == (len(expected), len(expected), 0, 0)
