"""worker/tasks.py, branch by branch: the scoring task run in-process (Celery's eager apply) against real
Redis and the HTTP S3 endpoint. End-to-end behaviour through real worker processes is in test_integration
and the fault suite; these pin each decision the task makes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from audioset_batch.jobs.factory import open_job_store
from audioset_batch.jobs.job_store import JobStore
from audioset_batch.storage.cos_store import CosStore
from tests.conftest import Stack
from tests.helpers import write_h5

pytestmark = pytest.mark.integration


@pytest.fixture
def task_env(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Stack, JobStore]]:
    """The task reads settings from the environment, as in a worker; fresh settings, scorer and job store."""
    from audioset_batch.settings import get_settings
    from worker import runtime

    for name, value in {**stack.env, "AUDIOSET_ALLOWED_SOURCES": stack.input_bucket}.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    runtime.reset_scorer()
    monkeypatch.setattr(runtime, "_jobs", None)
    yield stack, open_job_store(stack.settings().effective_state_url)
    get_settings.cache_clear()
    runtime.reset_scorer()


def run(url: str, jobs: JobStore, task_id: str = "t-1") -> tuple[str, object]:
    """Apply the task eagerly for one job item; returns the job item's status and the task's result or error."""
    from worker.tasks import score_object

    job = jobs.create_job(name="unit")
    jobs.add_items(job, [url])
    result = score_object.apply(args=[url], kwargs={"job": job}, task_id=task_id)
    return jobs.items(job)[url], result.result


def record(stack: Stack, key: str) -> dict[str, object] | None:
    body = CosStore(stack.settings()).get_bytes(stack.results_bucket, f"predictions/{key}.error.json")
    return orjson.loads(body) if body else None


def test_a_good_file_is_scored(task_env: tuple[Stack, JobStore], tmp_path: Path) -> None:
    stack, jobs = task_env
    CosStore(stack.settings()).upload_file(write_h5(tmp_path / "a.h5", clips=3), stack.input_bucket, "u/a.h5")
    status, result = run(f"cos://{stack.input_bucket}/u/a.h5", jobs)
    assert status == "scored" and isinstance(result, dict) and result["clips"] == 3


def test_a_bad_file_gets_a_record_a_failed_item_and_a_failed_task(
    task_env: tuple[Stack, JobStore], tmp_path: Path
) -> None:
    from audioset_batch.errors import FileFailedError

    stack, jobs = task_env
    CosStore(stack.settings()).put_bytes(b"not hdf5", stack.input_bucket, "u/bad.h5")
    status, result = run(f"cos://{stack.input_bucket}/u/bad.h5", jobs)
    assert status == "failed" and isinstance(result, FileFailedError) and "NotHDF5Error" in str(result)
    assert (record(stack, f"{stack.input_bucket}/u/bad.h5") or {})["error"] == "NotHDF5Error"


@pytest.mark.parametrize("url", ["cos://{bucket}/a/../b.h5", "cos://other-bucket/x.h5", "nope://x/y.h5"])
def test_a_url_it_may_not_read_fails_without_a_record(task_env: tuple[Stack, JobStore], url: str) -> None:
    stack, jobs = task_env
    status, _ = run(url.format(bucket=stack.input_bucket), jobs)
    assert status == "failed"
    results = list(CosStore(stack.settings()).list(stack.results_bucket))
    assert results == []  # an invalid or foreign key has no safe place for a record


def test_a_file_whose_deliveries_ran_out_gets_an_attempts_exhausted_record(
    task_env: tuple[Stack, JobStore], tmp_path: Path
) -> None:
    stack, jobs = task_env
    CosStore(stack.settings()).upload_file(write_h5(tmp_path / "a.h5", clips=2), stack.input_bucket, "u/lost.h5")
    for _ in range(5):  # five earlier deliveries of this task died with their worker
        jobs.count_delivery("t-lost")
    status, _ = run(f"cos://{stack.input_bucket}/u/lost.h5", jobs, task_id="t-lost")
    assert status == "failed"
    rec = record(stack, f"{stack.input_bucket}/u/lost.h5") or {}
    assert rec["error"] == "AttemptsExhaustedError" and rec["attempts"] == 6


def test_an_unexpected_error_reloads_the_model_for_the_next_file(
    task_env: tuple[Stack, JobStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker import runtime

    stack, jobs = task_env
    store = CosStore(stack.settings())
    store.upload_file(write_h5(tmp_path / "a.h5", clips=2), stack.input_bucket, "u/one.h5")
    store.upload_file(write_h5(tmp_path / "b.h5", clips=2), stack.input_bucket, "u/two.h5")
    broken = runtime.load_scorer()

    def explode(x: object) -> object:
        raise RuntimeError("the model broke")

    monkeypatch.setattr(broken, "predict", explode)  # the first file breaks the loaded model
    status, _ = run(f"cos://{stack.input_bucket}/u/one.h5", jobs, task_id="t-one")
    assert status == "failed" and (record(stack, f"{stack.input_bucket}/u/one.h5") or {})["error"] == "RuntimeError"
    assert runtime.load_scorer() is not broken  # the next file gets a freshly loaded model ...
    status, _ = run(f"cos://{stack.input_bucket}/u/two.h5", jobs, task_id="t-two")
    assert status == "scored"  # ... and is scored


def test_scoring_messages_follow_one_versioned_schema() -> None:
    from audioset_batch.task_messages import MalformedMessageError, ScoreMessage

    sent = ScoreMessage(url="cos://in/a.h5", job="j1", item="cos://in/a.h5#e", force=True)
    assert ScoreMessage.parse([sent.url], sent.kwargs()) == sent and sent.kwargs()["v"] == 1
    assert ScoreMessage.parse(["cos://in/a.h5"], {"job": "j1"}).v == 1  # sent before the version field existed
    for args, kwargs, says in [
        (["cos://in/a.h5"], {"v": 2}, "v: Input should be 1"),
        ([12345], {}, "url: Input should be a valid string"),
        (["cos://in/a.h5"], {"force": "yes"}, "force: Input should be a valid boolean"),
        (["cos://in/a.h5"], {"job": "j" * 201}, "job: String should have at most 200 characters"),
        (["a", "b"], {}, "one positional argument"),
        ([], {}, "url: Field required"),
    ]:
        with pytest.raises(MalformedMessageError, match=re.escape(says)):
            ScoreMessage.parse(args, kwargs)


def test_a_hand_written_message_gets_the_routing_kombu_needs() -> None:
    from worker.guarded_transports import repaired

    message = {"body": "x", "headers": {"task": "t"}, "properties": {"delivery_info": {"exchange": 3}}}
    fixed = repaired(message, "q")
    assert fixed is not None and fixed["properties"]["delivery_info"] == {"exchange": "q", "routing_key": "q"}
    assert isinstance(fixed["properties"]["delivery_tag"], str)
    assert repaired(["not", "a", "message"], "q") is None and repaired({"properties": "x"}, "q") is None
    assert repaired({}, "q") is None and repaired({"body": "x", "headers": {"task": 1}}, "q") is None


def test_only_deliveries_no_live_worker_holds_are_put_back() -> None:
    from worker.redelivery import orphans

    now = 1000.0
    holders = [{"at": 998.0, "tags": ["running-on-a"]}, {"at": 996.0, "tags": ["prefetched-by-b"]}]
    unacked = [
        ("running-on-a", 900.0),  # held: never put back, however old
        ("prefetched-by-b", 900.0),
        ("lost-in-a-restart", 900.0),  # nobody holds it: back on its queue
        ("just-delivered", 990.0),  # younger than the grace: its holder may not have reported it yet
        ("after-b-reported", 997.0),  # delivered after holder b last reported: next round
    ]
    assert orphans(unacked, holders, now, grace=15.0) == ["lost-in-a-restart"]
    every_holder_gone = orphans(unacked, [], now, grace=15.0)  # e.g. the whole fleet was killed
    assert every_holder_gone == ["running-on-a", "prefetched-by-b", "lost-in-a-restart"]


def test_a_message_redis_loses_between_taking_it_and_recording_it_is_put_back(
    redis_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kombu takes a message off the queue (BRPOP), then records it as unacknowledged: Redis going away in between
    left it nowhere but in the consumer's memory, and the file pending for ever."""
    import uuid

    import redis
    from kombu import Connection

    from worker.guarded_transports import RedisTransport, put_back_undelivered

    queue = f"lost-{uuid.uuid4().hex[:8]}"
    with Connection(redis_db, transport=RedisTransport) as connection:
        channel = connection.default_channel
        for tag in ("lost-mid-delivery", "recorded-before-the-outage"):
            info = {"exchange": "", "routing_key": queue}
            properties = {"delivery_tag": tag, "delivery_info": info, "body_encoding": "base64"}
            channel._put(queue, {"body": "e30=", "headers": {"task": "t"}, "properties": properties})
        received: list[object] = []
        channel.basic_consume(queue, no_ack=False, callback=received.append, consumer_tag="soak")
        recorded = channel.qos.append

        def redis_went_away(message: object, tag: str) -> None:
            if tag == "recorded-before-the-outage":
                recorded(message, tag)  # recorded, then the connection broke before the consumer saw it
            raise redis.ConnectionError("Connection closed by server.")

        monkeypatch.setattr(channel.qos, "append", redis_went_away)
        for _ in range(2):
            with pytest.raises(redis.ConnectionError):
                connection.drain_events(timeout=5)
        client = channel.client
        assert received == [] and client.llen(queue) == 0
        assert not client.hexists(channel.unacked_key, "lost-mid-delivery")  # without the repair: nowhere
        assert put_back_undelivered(channel) == 1  # the recorded one is the redelivery sweep's, not sent twice
        assert put_back_undelivered(channel) == 0
        (raw,) = client.lrange(queue, 0, -1)
        assert orjson.loads(raw)["properties"]["delivery_tag"] == "lost-mid-delivery"
        client.delete(queue, channel.unacked_key, channel.unacked_index_key)
