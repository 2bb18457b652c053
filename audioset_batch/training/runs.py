"""Training as a queued job: submit a YAML spec, a worker on the ``training`` queue runs it.

A run's record (status, iteration, loss, validation mAP, artifact location) lives in
the job store, so ``audioset training list/show/monitor`` work from any host.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import threading
import time
import traceback
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from audioset_batch.errors import AudiosetError, ConfigError
from audioset_batch.jobs.job_store import JobStore
from audioset_batch.settings import Settings
from audioset_batch.storage.factory import store_for
from audioset_batch.storage.object_store import ObjectURL, check_key, check_source
from audioset_batch.task_names import TRAIN_TASK
from model.train_config import TrainConfig, TrainConfigError, describe
from model.training import Progress

log = logging.getLogger("audioset.training")
RUN_ID = re.compile(r"^train-\d{8}-\d{6}-[0-9a-f]{6}$")


def _listed(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class TrainingSpec(BaseModel):
    """A queued run as its YAML says it, flat: the data keys below plus any :class:`TrainConfig` setting."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    data: Annotated[list[str], BeforeValidator(_listed), Field(min_length=1)]
    output: str = ""
    labels: str | None = None
    validation: Annotated[list[str], BeforeValidator(_listed)] = []
    config: TrainConfig = Field(default_factory=TrainConfig)

    def to_json(self) -> dict[str, Any]:
        return {**self.model_dump(exclude={"config"}), **self.config.to_json()}

    @classmethod
    def from_json(cls, raw: Any, source: str = "<spec>") -> TrainingSpec:
        """The spec from its YAML mapping; every problem is one :class:`ConfigError` naming the file."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a mapping of settings")
        own = set(cls.model_fields) - {"config"}
        try:
            config = TrainConfig(**{k: v for k, v in raw.items() if k not in own})
            return cls(**{k: v for k, v in raw.items() if k in own}, config=config)
        except TrainConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        except ValidationError as exc:
            raise ConfigError(f"{source}: {describe(exc, cls)}") from None


def load_spec(path: Path) -> TrainingSpec:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return TrainingSpec.from_json(raw, source=str(path))


def new_run_id() -> str:
    return "train-" + time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def check_run_id(run_id: str) -> str:
    """Run ids are generated (``train-<date>-<time>-<hex>``), never paths: they name folders and keys."""
    if not isinstance(run_id, str) or not RUN_ID.match(run_id):
        raise ConfigError(
            f"training run id {run_id!r} is not one this service generates (train-YYYYMMDD-HHMMSS-xxxxxx)"
        )
    return run_id


def check_queued_locations(spec: TrainingSpec, settings: Settings) -> None:
    """What a queued run may touch on the worker: bucket URLs inside AUDIOSET_ALLOWED_SOURCES (data) and
    local paths under AUDIOSET_LOCAL_ROOT only; a spec must not make a worker read or write anywhere else."""
    root = settings.local_root.resolve()
    reads = [*spec.data, *spec.validation]
    for what, location in [*(("data", d) for d in reads), ("labels", spec.labels), ("output", spec.output)]:
        if not location:
            continue
        if "://" in location:
            url = ObjectURL.parse(location)
            if what == "data":
                check_source(url, settings.allowed_sources)
            elif url.key:
                check_key(url.key)
            continue
        if not (root / location).resolve().is_relative_to(root):
            raise ConfigError(
                f"{what} {location!r}: a queued run reads and writes local files only under "
                f"AUDIOSET_LOCAL_ROOT ({root}); use a path inside it or a bucket URL"
            )


def submit(spec: TrainingSpec, app: Any, store: JobStore, queue: str) -> str:
    run_id = new_run_id()
    store.put_run(
        run_id,
        {
            "id": run_id,
            "status": "queued",
            "created": time.time(),
            "spec": spec.to_json(),
            "iteration": 0,
            "iterations": spec.config.iterations,
        },
    )
    app.send_task(TRAIN_TASK, args=[run_id, spec.to_json()], queue=queue)
    return run_id


def _publish(artifact_dir: Path, output: str, run_id: str, name: str, settings: Settings) -> str:
    """Copy the artifact to ``<output>/<run id>/models/<name>/`` (a bucket URL or a local folder)."""
    if "://" in output or not output:
        base = ObjectURL.parse(output) if output else ObjectURL(settings.store_scheme, settings.results_bucket, "")
        prefix = base.key if not base.key or base.key.endswith("/") else base.key + "/"
        store = store_for(base.scheme, settings)
        key_prefix = f"{prefix}{run_id}/models/{name}/"
        for item in sorted(artifact_dir.iterdir()):
            store.upload_file(item, base.bucket, key_prefix + item.name)
        return f"{base.scheme}://{base.bucket}/{key_prefix}"
    target = Path(output) / run_id / "models" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(artifact_dir, target, dirs_exist_ok=True)
    return str(target)


def execute(run_id: str, raw_spec: dict[str, Any], settings: Settings, store: JobStore) -> dict[str, Any]:
    """Run one training job to completion, recording progress; never raises for a failed run."""
    from audioset_batch.training.datasets import load_training_data
    from audioset_batch.training.trainer import train_on

    check_run_id(run_id)
    record: dict[str, Any] = {"id": run_id, "created": time.time(), "iteration": 0}
    with contextlib.suppress(KeyError):
        record = store.get_run(run_id)
    record.update(status="running", started=time.time(), heartbeat=time.time(), spec=raw_spec)
    store.put_run(run_id, record)
    last_write = 0.0
    beating = Heartbeat(store, run_id, record)
    try:
        spec = TrainingSpec.from_json(raw_spec, source=run_id)
        check_queued_locations(spec, settings)
        root = settings.local_root.resolve()

        def on_worker(location: str) -> str:  # a bucket URL as it is; a local path under the local root
            return location if "://" in location else str(root / location)

        record["iterations"] = spec.config.iterations
        loaded = load_training_data(
            [on_worker(d) for d in spec.data],
            [on_worker(v) for v in spec.validation],
            on_worker(spec.labels) if spec.labels else None,
            settings,
        )
        workdir = (settings.local_root / ".training" / run_id).resolve()

        def progress(p: Progress) -> None:
            nonlocal last_write
            with beating.lock:
                record["iteration"], record["loss"], record["stage"] = p.iteration, p.loss, p.stage
                if p.validation_map is not None:
                    record["validation_map"], record["best_map"] = p.validation_map, p.best_map
            if p.validation_map is not None or time.monotonic() - last_write > 2.0:
                beating.write()
                last_write = time.monotonic()

        result = train_on(spec.config, loaded, workdir, progress)
        output = on_worker(spec.output) if spec.output else ""
        record["artifact"] = _publish(result.artifact, output, run_id, spec.config.name, settings)
        record.update(
            status="completed", finished=time.time(), best_map=result.best_map, best_iteration=result.best_iteration
        )
        log.info(
            "training run %s completed: validation mAP %.4f, artifact %s", run_id, result.best_map, record["artifact"]
        )
    except (AudiosetError, ValueError, KeyError, OSError) as exc:
        record.update(
            status="failed",
            finished=time.time(),
            error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(limit=5),
        )
        log.error("training run %s failed: %s: %s", run_id, type(exc).__name__, exc)
    finally:
        beating.stop()
    store.put_run(run_id, record)
    return record


HEARTBEAT_SECONDS = 30.0
#: A ``running`` run whose heartbeat is older than this lost its worker (killed, its machine gone).
STALE_AFTER_SECONDS = 300.0


class Heartbeat:
    """Writes the run's record with a fresh ``heartbeat`` every :data:`HEARTBEAT_SECONDS`, from a thread, so a run
    loading data or evaluating for minutes is still seen alive, and one whose worker died is seen lost."""

    def __init__(self, store: JobStore, run_id: str, record: dict[str, Any]) -> None:
        self.store, self.run_id, self.record = store, run_id, record
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{run_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self.write()
            except Exception as exc:  # the job store is briefly away: the next beat tries again
                log.warning("training run %s: heartbeat not written (%s: %s)", self.run_id, type(exc).__name__, exc)

    def write(self) -> None:
        with self.lock:
            self.record["heartbeat"] = time.time()
            self.store.put_run(self.run_id, dict(self.record))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def observed(store: JobStore, run: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """The run as it really is: a ``running`` run whose heartbeat stopped is ``lost`` (and recorded so), so that
    ``training list``, ``show`` and ``monitor`` do not show it running for ever."""
    now = time.time() if now is None else now
    beat = run.get("heartbeat") or run.get("started") or 0
    if run.get("status") != "running" or now - float(beat) <= STALE_AFTER_SECONDS:
        return run
    since = datetime.fromtimestamp(float(beat), UTC).isoformat(timespec="seconds")
    lost = {
        **run,
        "status": "lost",
        "finished": now,
        "error": f"its worker stopped (no heartbeat since {since}); submit the spec again",
    }
    store.put_run(str(run["id"]), lost)
    return lost
