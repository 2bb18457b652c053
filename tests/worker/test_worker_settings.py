"""Every setting the README says affects scoring, through a real queued worker (not only the CLI).

A queued worker once ignored AUDIOSET_PRECISION that ``audioset score`` honoured: these tests start
`audioset`'s Celery worker with each setting and read the result lines it wrote.
"""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import orjson
import pytest

from audioset_batch.jobs.factory import open_job_store
from audioset_batch.storage.cos_store import CosStore
from producers.enqueue import enqueue
from tests.conftest import RedisServer, Stack, WorkerProcess, new_stack
from tests.helpers import wait_job, write_h5
from worker.app import make_app

pytestmark = pytest.mark.integration


def score_with(stack: Stack, tmp_path: Path, env: dict[str, str], files: dict[str, Path]) -> dict[str, bytes | None]:
    """Upload ``files``, score them with a worker started with ``env``; returns each result object by suffix."""
    store = CosStore(stack.settings())
    prefix = f"settings-{len(list(tmp_path.iterdir()))}"
    for name, path in files.items():
        store.upload_file(path, stack.input_bucket, f"{prefix}/{name}")
    worker = WorkerProcess({**stack.env, **env}, tmp_path / "w.log")
    try:
        settings = stack.settings()
        jobs = open_job_store(settings.effective_state_url)
        job = enqueue(make_app(settings), jobs, [f"cos://{stack.input_bucket}/{prefix}/"], settings).job
        wait_job(jobs, job, 120)
    finally:
        worker.stop()
    results: dict[str, bytes | None] = {}
    for name in files:
        base = f"predictions/{stack.input_bucket}/{prefix}/{name}"
        for suffix in (".jsonl", ".summary.json", ".error.json"):
            results[name + suffix] = store.get_bytes(stack.results_bucket, base + suffix)
    return results


def test_output_and_precision_settings_reach_the_queued_worker(stack: Stack, tmp_path: Path) -> None:
    from model.litert_forward import litert_available

    if not litert_available():
        pytest.fail("LiteRT (ai-edge-litert) is missing; int8 (the default's first choice) cannot run")
    env = {
        "AUDIOSET_PRECISION": "int8",
        "AUDIOSET_TOP_K": "2",
        "AUDIOSET_FULL_SCORES": "true",
        "AUDIOSET_METRICS_MAX_CLIPS": "3",
        "AUDIOSET_BATCH_SIZE": "2",
        "AUDIOSET_READ_CHUNK_CLIPS": "3",
    }
    results = score_with(stack, tmp_path, env, {"a.h5": write_h5(tmp_path / "a.h5", clips=7, classes=12)})
    lines = [orjson.loads(line) for line in (results["a.h5.jsonl"] or b"").splitlines()]
    assert [line["index"] for line in lines] == list(range(7))  # three reads of 3 clips, batches of 2
    assert all(line["model"] == "tiny@0+int8" for line in lines)  # AUDIOSET_PRECISION
    assert all(len(line["labels"]) == 2 for line in lines)  # AUDIOSET_TOP_K
    assert all(len(line["scores"]) == 12 for line in lines)  # AUDIOSET_FULL_SCORES
    summary = orjson.loads(results["a.h5.summary.json"] or b"{}")
    assert summary["model"] == "tiny@0+int8" and summary["top_k"] == 2 and summary["full_scores"] is True
    assert summary["metrics"] is None and "AUDIOSET_METRICS_MAX_CLIPS=3" in summary["notes"][0]


def test_the_default_precision_is_auto_and_picks_int8(
    redis_server: RedisServer, s3_endpoint: str, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audioset_batch.settings import Settings
    from model.litert_forward import litert_available

    monkeypatch.delenv("AUDIOSET_PRECISION", raising=False)  # the suite pins float32; this test wants the default
    # a stack that sets no precision, serving a model without compiled forms (converted to int8 at load)
    stack = new_stack(redis_server, s3_endpoint, tiny_model)
    assert Settings.model_fields["precision"].default == "auto"
    results = score_with(stack, tmp_path, {}, {"a.h5": write_h5(tmp_path / "a.h5", clips=2)})
    line = orjson.loads((results["a.h5.jsonl"] or b"").splitlines()[0])
    assert line["model"] == ("tiny@0+int8" if litert_available() else "tiny@0")


def test_limit_settings_reach_the_queued_worker(stack: Stack, tmp_path: Path) -> None:
    chunked = tmp_path / "chunked.h5"
    with h5py.File(chunked, "w") as f:
        f.create_dataset("x", data=np.zeros((2, 10, 128), np.uint8), chunks=(2, 10, 128))
    big = write_h5(tmp_path / "big.h5", clips=40)
    env = {
        "AUDIOSET_MAX_CLIPS": "5",
        "AUDIOSET_MAX_CHUNK_BYTES": "1000",
        "AUDIOSET_MAX_OBJECT_BYTES": str(big.stat().st_size - 1),
    }
    files = {"many.h5": write_h5(tmp_path / "many.h5", clips=6), "chunked.h5": chunked, "big.h5": big}
    files["ok.h5"] = write_h5(tmp_path / "ok.h5", clips=3)
    results = score_with(stack, tmp_path, env, files)
    for name, limit in (
        ("many.h5", "AUDIOSET_MAX_CLIPS=5"),
        ("chunked.h5", "AUDIOSET_MAX_CHUNK_BYTES=1000"),
        ("big.h5", "AUDIOSET_MAX_OBJECT_BYTES="),
    ):
        record = orjson.loads(results[name + ".error.json"] or b"{}")
        assert record.get("error") == "LimitExceededError" and limit in record["message"], (name, record)
    assert len((results["ok.h5.jsonl"] or b"").splitlines()) == 3


def test_an_ensemble_artifact_is_served_by_the_queued_worker(stack: Stack, tmp_path: Path) -> None:
    from model.ensemble import combine_artifacts
    from model.inference import Predictor
    from tests.helpers import build_artifact

    members = [
        build_artifact(tmp_path / "m1", architecture="feature_level_attention", seed=3),
        build_artifact(tmp_path / "m2", architecture="decision_level_single_attention", seed=4),
    ]
    ensemble = tmp_path / "ensemble"
    combine_artifacts(members, ensemble, name="ens", version="2", compile_forms=False)
    data = write_h5(tmp_path / "a.h5", clips=4, classes=12)
    env = {"AUDIOSET_MODEL_PATH": str(ensemble), "AUDIOSET_PRECISION": "float32", "AUDIOSET_FULL_SCORES": "true"}
    results = score_with(stack, tmp_path, env, {"a.h5": data})
    lines = [orjson.loads(line) for line in (results["a.h5.jsonl"] or b"").splitlines()]
    assert {line["model"] for line in lines} == {"ens@2"}
    with h5py.File(data, "r") as f:
        x = f["x"][()]
    expected = np.mean([Predictor.from_artifact(m).predict(x) for m in members], axis=0)
    np.testing.assert_allclose([line["scores"] for line in lines], expected, atol=1e-5)


def test_a_bare_key_in_a_message_follows_the_configured_store(stack: Stack, tmp_path: Path) -> None:
    """With no COS endpoint the store is folder buckets: a bare key in a queued message is read from
    AUDIOSET_INPUT_BUCKET there, as `audioset score a.h5` reads it (once it meant `cos` in the worker only)."""
    import time

    from audioset_batch.task_messages import ScoreMessage
    from audioset_batch.task_names import SCORE_TASK

    root = tmp_path / "root"
    (root / "incoming").mkdir(parents=True)
    write_h5(root / "incoming" / "a.h5", clips=3, classes=12)
    env = {k: v for k, v in stack.env.items() if not k.startswith("AUDIOSET_COS_")}
    env |= {"AUDIOSET_LOCAL_ROOT": str(root), "AUDIOSET_INPUT_BUCKET": "incoming", "AUDIOSET_RESULTS_BUCKET": "out"}
    worker = WorkerProcess(env, tmp_path / "w.log")
    try:
        app = make_app(stack.settings())
        app.send_task(SCORE_TASK, args=["a.h5"], kwargs=ScoreMessage(url="a.h5").kwargs(), queue=env["AUDIOSET_QUEUE"])
        result = root / "out" / "predictions" / "incoming" / "a.h5.jsonl"
        deadline = time.monotonic() + 90
        while not result.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        worker.stop()
    assert result.exists(), worker.text()[-3000:]
    assert len(result.read_bytes().splitlines()) == 3


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_a_worker_child_serves_the_compiled_form_without_loading_tensorflow(stack: Stack, tmp_path: Path) -> None:
    """Neither the Celery parent nor its child maps a TensorFlow library: the child runs a compiled form (LiteRT,
    or OpenVINO on a CPU with AMX)."""
    from model.form_builder import add_forms
    from tests.helpers import auto_serves, build_artifact

    model = build_artifact(tmp_path / "lite", name="lite")
    add_forms(model)
    env = {"AUDIOSET_MODEL_PATH": str(model), "AUDIOSET_PRECISION": "auto"}
    worker = WorkerProcess({**stack.env, **env}, tmp_path / "w.log")
    try:
        children = _children(worker.process.pid)
        maps = {pid: Path(f"/proc/{pid}/maps").read_text() for pid in [worker.process.pid, *children]}
        settings = stack.settings()
        store = CosStore(settings)
        store.upload_file(write_h5(tmp_path / "a.h5", clips=3), stack.input_bucket, "lite/a.h5")
        jobs = open_job_store(settings.effective_state_url)
        job = enqueue(make_app(settings), jobs, [f"cos://{stack.input_bucket}/lite/"], settings).job
        assert wait_job(jobs, job, 120).scored == 1
    finally:
        worker.stop()
    # TensorFlow's own package and libraries; OpenVINO's frontend for TensorFlow files (openvino/frontend/tensorflow/,
    # mapped while it reads a form) is not TensorFlow
    tensorflow = re.compile(r"-packages/tensorflow/|libtensorflow_(framework|cc)")
    assert children and not [line for text in maps.values() for line in text.splitlines() if tensorflow.search(line)]
    precision, runtime = auto_serves()  # the int8 form in LiteRT; on a CPU with AMX, the bfloat16 in OpenVINO
    library = "ai_edge_litert" if runtime == "LiteRT" else "libopenvino"
    assert all(library in maps[pid] for pid in children)
    assert f"model lite@0+{precision} loaded" in worker.text() and f"(12 classes, {runtime}," in worker.text()
    key = f"predictions/{stack.input_bucket}/lite/a.h5.jsonl"
    lines = (store.get_bytes(stack.results_bucket, key) or b"").splitlines()
    assert len(lines) == 3 and all(orjson.loads(line)["model"] == f"lite@0+{precision}" for line in lines)
