"""``python -m benchmarks [--model DIR] [--clips N] [--precision P,P] [--rss-clips N,N] [--skip-queue] …``.

Measures, in one run on one machine, and reports each figure as a ratio to forward-only:
- forward only: the model (the shipped one, or ``--model``) on in-memory arrays (the ceiling);
- ``audioset score`` end to end on a local file (read, infer, write JSONL), top-5 and full scores;
- the same two for each fast precision (bfloat16, int8), with the speed-up over float32 end to end, and with
  ``--rounds N`` every precision forward only and end to end N times interleaved (medians, and ratios of the
  medians and paired within each round);
- the seed's way: ``model.predict`` over the whole array, then ``json.dumps`` per clip (top-5 and full scores),
  with this model and with the seed's model (the serving budget: the model at the default precision end to end
  against the seed's way with the seed's model in float32);
- through the queue: Celery with 1 and 2 worker processes against an HTTP S3 endpoint and Redis;
- peak RSS of ``audioset score`` for large files;
- training speed of the model's recipe (iterations per second), float32 and bfloat16 mixed precision, under
  ``training.members`` by tag: the model's own, or each member's for an ensemble artifact.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from benchmarks.files import ROOT, settings, write_file
from benchmarks.memory import peak_rss_mb, worker_child_peak_rss_mb
from benchmarks.training_speed import training_report
from model.artifact import DEFAULT_ARTIFACT
from model.labels import ClassLabel
from model.openvino_forward import CALL_CLIPS

if TYPE_CHECKING:
    from model.inference import Predictor


@functools.cache
def loaded(model: Path, precision: str) -> Predictor:
    """The model in ``precision``, loaded and warmed up once per run: every figure is timed after the warm-up, so
    loading it again for each (float32 traces the whole graph each time) would only make the run longer."""
    from audioset_batch.scoring.model_loading import load_predictor

    predictor = load_predictor(settings(model), precision=precision)
    # warm-up: trace, allocate, and make every request one full call uses (OpenVINO's are made on first need)
    predictor.predict(np.zeros((CALL_CLIPS, 10, 128), np.uint8))
    return predictor


def forward_only(model: Path, clips: int, precision: str = "float32") -> float:
    predictor = loaded(model, precision)
    x = np.random.default_rng(1).integers(0, 256, size=(clips, 10, 128), dtype=np.uint8)
    start = time.perf_counter()
    predictor.predict(x)
    return clips / (time.perf_counter() - start)


def score_end_to_end(model: Path, path: Path, clips: int, full: bool, precision: str = "float32") -> float:
    """``audioset score``'s path: the scorer built around the model as settings load it, as the CLI and the worker
    build it."""
    from audioset_batch.scoring.pipeline import ObjectScorer

    scorer = ObjectScorer.from_settings(settings(model), predictor=loaded(model, precision), top_k=5, full_scores=full)
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        scorer.score_local(path, out, str(path))
        return clips / (time.perf_counter() - start)


def seed_way(model: Path, path: Path, clips: int, full: bool = False) -> float:
    """The seed's inference: one Keras predict over the file, then a Python loop of json.dumps."""
    from model.artifact import load

    keras_model, manifest = load(model)
    names = [c.name for c in manifest.classes]
    start = time.perf_counter()
    with h5py.File(path, "r") as f:
        x = (f["x"][:].astype(np.float32) - 128.0) / 128.0
        ids = f["video_id_list"][:]
    scores = keras_model.predict(x, batch_size=1024, verbose=0)
    with tempfile.TemporaryFile("w") as out:
        for i, row in enumerate(scores):
            top = np.argsort(row)[::-1][:5]
            record: dict[str, Any] = {
                "video_id": ids[i].decode(),
                "labels": [{"name": names[c], "score": float(row[c])} for c in top],
            }
            if full:
                record["scores"] = {names[c]: float(row[c]) for c in range(len(names))}
            out.write(json.dumps(record) + "\n")
    return clips / (time.perf_counter() - start)


def seed_model(classes: list[ClassLabel], folder: Path) -> Path:
    """The seed's network at the seed's size (decision-level multi-attention, 1,024 units): the serving baseline.

    Its weights are a fresh initialisation: speed depends on the arithmetic, not on what was learnt.
    """
    from model.architectures import DEFAULT_ARCHITECTURE
    from model.artifact import save_untrained

    return save_untrained(
        folder, DEFAULT_ARCHITECTURE, classes, 1024, name="seed-model", version="0", why="serving-speed baseline"
    )


def through_queue(model: Path, workers: int, files: int, clips: int, tmp: Path, threads: int = 0) -> float:
    """Clips per second through Redis + Celery + an HTTP S3 endpoint (moto) with N worker processes."""
    import uuid

    from moto.server import ThreadedMotoServer

    from tests.conftest import free_port, wait_for_port

    redis_port, s3_port = free_port(), free_port()
    run = uuid.uuid4().hex[:8]  # moto keeps buckets across servers in one process: use fresh names
    input_bucket, results_bucket = f"input-{run}", f"results-{run}"
    redis_proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    s3.start()
    wait_for_port(redis_port)
    wait_for_port(s3_port)
    env = {
        "AUDIOSET_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "AUDIOSET_COS_ENDPOINT": f"http://127.0.0.1:{s3_port}",
        "AUDIOSET_COS_ACCESS_KEY_ID": "bench",
        "AUDIOSET_COS_SECRET_ACCESS_KEY": "bench-secret",
        "AUDIOSET_RESULTS_BUCKET": results_bucket,
        "AUDIOSET_WORKER_CONCURRENCY": str(workers),
        "AUDIOSET_TF_THREADS": str(threads),
        "AUDIOSET_QUEUE": "bench",
        "AUDIOSET_LOG_LEVEL": "WARNING",
        "AUDIOSET_MODEL_PATH": str(model),
    }
    os.environ.update(env)
    from audioset_batch.jobs.factory import open_job_store
    from audioset_batch.settings import load_settings
    from audioset_batch.storage.cos_store import CosStore
    from producers.enqueue import enqueue
    from worker.app import make_app
    from worker.config import worker_command

    settings = load_settings()
    store = CosStore(settings)
    store.client.create_bucket(Bucket=input_bucket)
    store.client.create_bucket(Bucket=results_bucket)
    source = write_file(tmp / "q.h5", clips)
    for i in range(files):
        store.upload_file(source, input_bucket, f"b/{i:04d}.h5")
    worker = subprocess.Popen(
        worker_command(workers, "bench", "WARNING", "--without-gossip", "--without-mingle"),
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # warm-up: one file per process loads the model before the clock starts
        jobs = open_job_store(settings.effective_state_url)
        store.upload_file(source, input_bucket, "warm/0.h5")
        warm = enqueue(make_app(settings), jobs, [f"cos://{input_bucket}/warm/"], settings).job
        while not jobs.status(warm).finished:
            time.sleep(0.1)
        time.sleep(5)
        start = time.perf_counter()
        job = enqueue(make_app(settings), jobs, [f"cos://{input_bucket}/b/"], settings).job
        while not jobs.status(job).finished:
            time.sleep(0.05)
        elapsed = time.perf_counter() - start
        status = jobs.status(job)
        if (status.total, status.scored) != (files, files):
            raise RuntimeError(f"queue benchmark: expected {files} files scored, got {status}")
        return files * clips / elapsed
    finally:
        worker.terminate()
        worker.wait(60)
        s3.stop()
        redis_proc.terminate()


def not_here(precision: str) -> str | None:
    """Why ``precision`` cannot be measured on this CPU (bfloat16 without avx512_bf16/AMX, say), or None."""
    from model.inference import PrecisionUnavailableError, resolve_precision

    try:
        resolved = resolve_precision(precision)
    except PrecisionUnavailableError as exc:
        return str(exc)
    return None if resolved == precision else f"resolved to {resolved} on this machine"


def fast_precision(
    model: Path, precision: str, path: Path, clips: int, forward_clips: int, report: dict[str, Any]
) -> dict[str, Any]:
    """One fast precision: forward-only and end to end, each against the same measurement in float32."""
    why_not = not_here(precision)
    if why_not:
        return {"skipped": why_not}
    forward = forward_only(model, forward_clips, precision)
    result: dict[str, Any] = {
        "forward_only": {
            "clips_per_second": round(forward, 1),
            "speedup_vs_float32": round(forward / report["forward_only"]["clips_per_second"], 2),
        }
    }
    for name, full in (("score_top5", False), ("score_full_scores", True)):
        value = score_end_to_end(model, path, clips, full, precision)
        result[name] = {
            "clips_per_second": round(value, 1),
            "ratio_to_own_forward_only": round(value / forward, 3),
            "speedup_vs_float32": round(value / report[name]["clips_per_second"], 2),
        }
    return result


def interleaved(model: Path, path: Path, clips: int, forward_clips: int, precisions: list[str], rounds: int) -> Any:
    """Every precision that runs here, forward only and end to end (top-5), round after round in one process:
    medians and each precision's ratio to float32 and to int8, read off the same rounds (a shared host drifts
    between one precision's run and the next; interleaving spreads that drift over all of them)."""
    served = ["float32", *(p for p in precisions if not not_here(p))]
    measured: dict[str, dict[str, list[float]]] = {p: {"forward_only": [], "score_top5": []} for p in served}
    for _ in range(rounds):
        for precision in served:
            measured[precision]["forward_only"].append(forward_only(model, forward_clips, precision))
            measured[precision]["score_top5"].append(score_end_to_end(model, path, clips, False, precision))
    medians = {p: {k: float(np.median(v)) for k, v in m.items()} for p, m in measured.items()}
    report: dict[str, Any] = {"rounds": rounds}
    for precision, values in medians.items():
        report[precision] = {
            kind: {
                "clips_per_second_median": round(value, 1),
                "range": [round(min(measured[precision][kind]), 1), round(max(measured[precision][kind]), 1)],
                **{
                    f"vs_{base}": round(value / medians[base][kind], 2)
                    for base in ("float32", "int8")
                    if base in medians and base != precision
                },
                # the ratio within each round, then its median: drift slower than a round cancels out
                **{
                    f"vs_{base}_paired": round(
                        float(np.median(np.divide(measured[precision][kind], measured[base][kind]))), 2
                    )
                    for base in ("float32", "int8")
                    if base in medians and base != precision
                },
            }
            for kind, value in values.items()
        }
    return report


def serving_budget(report: dict[str, Any], baseline: float, forms: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The model at the default precision (``auto``, as it resolves for this model's compiled ``forms`` on this
    CPU), end to end with top-5, against the seed's way with the seed's model in float32: a ratio of at least 1
    means serving it costs no more than the seed did."""
    from model.inference import resolve_precision

    default = resolve_precision("auto", forms)
    measured = report["score_top5"] if default == "float32" else report.get(default, {}).get("score_top5")
    if measured is None:
        return {"skipped": f"the default precision here is {default}; measure it with --precision {default}"}
    return {
        "default_precision": default,
        "score_top5_clips_per_second": measured["clips_per_second"],
        "seed_way_seed_model_clips_per_second": round(baseline, 1),
        "ratio": round(measured["clips_per_second"] / baseline, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_ARTIFACT,
        help="model artifact folder to measure (default: the shipped model)",
    )
    parser.add_argument("--clips", type=int, default=100_000, help="clips in the end-to-end file")
    parser.add_argument("--forward-clips", type=int, default=50_000)
    parser.add_argument(
        "--rss-clips", default="200000,1000000", help="comma-separated sizes of the labelled files for peak RSS"
    )
    parser.add_argument(
        "--rss-precision",
        default="auto",
        help="precision of the peak-RSS runs (auto, the default precision: the compiled form, without TensorFlow)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="also measure every precision forward only and end to end this many times, interleaved (medians)",
    )
    parser.add_argument("--queue-files", type=int, default=16)
    parser.add_argument("--queue-clips", type=int, default=5000, help="clips per file through the queue")
    parser.add_argument("--skip-queue", action="store_true")
    parser.add_argument(
        "--training-iterations", type=int, default=100, help="timed training iterations per precision (0: skip)"
    )
    parser.add_argument(
        "--precision",
        default="bfloat16,int8",
        help="comma-separated fast precisions to measure against float32 (empty: float32 only)",
    )
    args = parser.parse_args()
    if args.rounds < 0:
        parser.error(f"--rounds must be 0 (none) or more, not {args.rounds}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from model.artifact import read_manifest
    from model.artifact_errors import ArtifactError

    model: Path = args.model.resolve()
    try:
        manifest = read_manifest(model)
    except ArtifactError as exc:
        parser.error(str(exc))
    report: dict[str, Any] = {
        "model": {"tag": manifest.tag, "architecture": manifest.architecture, "path": str(model)},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
        },
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        forward = forward_only(model, args.forward_clips)
        report["forward_only"] = {"clips_per_second": round(forward, 1), "ratio": 1.0}

        def entry(value: float, **extra: Any) -> dict[str, Any]:
            return {"clips_per_second": round(value, 1), "ratio": round(value / forward, 3), **extra}

        big = write_file(tmp / "big.h5", args.clips)
        report["score_top5"] = entry(score_end_to_end(model, big, args.clips, full=False), clips=args.clips)
        report["score_full_scores"] = entry(score_end_to_end(model, big, args.clips, full=True), clips=args.clips)
        report["seed_way"] = entry(seed_way(model, big, args.clips), clips=args.clips)
        report["seed_way_full_scores"] = entry(seed_way(model, big, args.clips, full=True), clips=args.clips)
        for precision in (p for p in args.precision.split(",") if p):
            report[precision] = fast_precision(model, precision, big, args.clips, args.forward_clips, report)
        baseline = seed_way(seed_model(manifest.classes, tmp / "seed-model"), big, args.clips)
        report["seed_way_seed_model"] = entry(baseline, clips=args.clips)
        report["serving_budget"] = serving_budget(report, baseline, manifest.compiled)
        if args.rounds:
            precisions = [p for p in args.precision.split(",") if p]
            report["interleaved"] = interleaved(model, big, args.clips, args.forward_clips, precisions, args.rounds)
        big.unlink()
        if not args.skip_queue:
            # one process limited to one core: the unit that N processes should scale from
            report["queue_1_worker_1_thread"] = entry(
                through_queue(model, 1, args.queue_files, args.queue_clips, tmp, threads=1),
                files=args.queue_files,
                clips_per_file=args.queue_clips,
            )
            for n in (1, 2):
                report[f"queue_{n}_workers"] = entry(
                    through_queue(model, n, args.queue_files, args.queue_clips, tmp),
                    files=args.queue_files,
                    clips_per_file=args.queue_clips,
                )
            # the scaling target: N single-core processes against N x one single-core process
            report["queue_2_workers_vs_2x_1_worker_1_thread"] = round(
                report["queue_2_workers"]["clips_per_second"]
                / (2 * report["queue_1_worker_1_thread"]["clips_per_second"]),
                3,
            )
        for size in (int(s) for s in args.rss_clips.split(",") if s):
            # labelled: the summary's metrics over every clip are the largest thing scoring holds
            path = write_file(tmp / f"rss{size}.h5", size, classes=len(manifest.classes))
            report[f"rss_{size}_clips"] = peak_rss_mb(model, path, args.rss_precision)
            if not args.skip_queue and size == min(int(s) for s in args.rss_clips.split(",") if s):
                report[f"rss_{size}_clips"]["worker_child_peak_rss_mb"] = worker_child_peak_rss_mb(model, path, tmp)
            path.unlink()
        if args.training_iterations:
            report["training"] = training_report(manifest, args.training_iterations, tmp)
    report["self_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
