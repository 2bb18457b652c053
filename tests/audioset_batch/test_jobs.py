from __future__ import annotations

import time
from pathlib import Path

import pytest

from audioset_batch.jobs.factory import open_job_store
from audioset_batch.jobs.job_store import JobStore, UnknownJobError, prunable_jobs
from audioset_batch.jobs.redis_job_store import RedisJobStore
from audioset_batch.jobs.sqlite_job_store import SqliteJobStore


@pytest.fixture(params=["sqlite", "redis"])
def jobs(request: pytest.FixtureRequest, tmp_path: Path) -> JobStore:
    if request.param == "sqlite":
        return SqliteJobStore(tmp_path / "state.db")
    return RedisJobStore(request.getfixturevalue("redis_db"))


def test_job_lifecycle(jobs: JobStore) -> None:
    job = jobs.create_job(name="nightly")
    assert jobs.add_items(job, ["a", "b", "c", "a"]) == ["a", "b", "c"]
    assert jobs.add_items(job, ["b", "d"]) == ["d"]
    status = jobs.status(job)
    assert (status.total, status.pending, status.finished, status.name) == (4, 4, False, "nightly")
    assert jobs.mark(job, "a", "scored")
    assert jobs.mark(job, "b", "skipped")
    assert jobs.mark(job, "c", "failed")
    assert not jobs.mark(job, "a", "skipped")  # a duplicate delivery cannot move a finished item
    status = jobs.status(job)
    assert (status.scored, status.skipped, status.failed, status.pending) == (1, 1, 1, 1)
    assert jobs.mark(job, "d", "scored")
    assert jobs.status(job).finished
    assert jobs.items(job, "failed") == {"c": "failed"}
    assert [s.id for s in jobs.list_jobs()] == [job]


def test_forgetting_takes_back_only_pending_items(jobs: JobStore) -> None:
    job = jobs.create_job()
    jobs.add_items(job, ["a", "b", "c"])
    jobs.mark(job, "a", "scored")
    assert jobs.forget_items(job, ["a", "b", "zz"]) == 1  # a is final, zz was never there
    assert jobs.items(job) == {"a": "scored", "c": "pending"}
    status = jobs.status(job)
    assert (status.total, status.scored, status.pending) == (2, 1, 1)
    assert jobs.add_items(job, ["b"]) == ["b"]  # a forgotten item is new again
    assert jobs.status(job).total == 3


def test_dropping_finished_items_keeps_pending_ones(jobs: JobStore) -> None:
    job = jobs.create_job()
    jobs.add_items(job, ["a", "b", "c", "d"])
    jobs.mark(job, "a", "scored")
    jobs.mark(job, "b", "failed")
    assert jobs.drop_finished_items(job, ["a", "b", "c", "zz"]) == 2  # c is pending, zz was never there
    assert jobs.items(job) == {"c": "pending", "d": "pending"}
    status = jobs.status(job)
    assert (status.total, status.scored, status.failed, status.pending) == (2, 0, 0, 2)
    assert jobs.add_items(job, ["a"]) == ["a"]  # a dropped item is new again


def test_items_by_prefix_take_object_keys_literally(jobs: JobStore) -> None:
    job = jobs.create_job()
    sources = ["cos://b/a.h5#e1", "cos://b/a.h5#e2", "cos://b/[a].h5#e1", "cos://b/a*.h5#e1", "cos://b/ab.h5#e1"]
    jobs.add_items(job, sources)
    jobs.mark(job, "cos://b/a.h5#e1", "scored")
    assert jobs.items(job, prefix="cos://b/a.h5#") == {"cos://b/a.h5#e1": "scored", "cos://b/a.h5#e2": "pending"}
    assert jobs.items(job, "scored", prefix="cos://b/a.h5#") == {"cos://b/a.h5#e1": "scored"}
    # Glob and LIKE characters in a key match only themselves.
    assert list(jobs.items(job, prefix="cos://b/[a].h5#")) == ["cos://b/[a].h5#e1"]
    assert list(jobs.items(job, prefix="cos://b/a*.h5#")) == ["cos://b/a*.h5#e1"]
    assert jobs.items(job, prefix="cos://b/a%") == {}
    assert len(jobs.items(job, prefix="")) == len(sources)


def test_deleting_a_job_removes_it_whole(jobs: JobStore) -> None:
    kept, gone = jobs.create_job(name="kept"), jobs.create_job(name="gone")
    for job in (kept, gone):
        jobs.add_items(job, ["a", "b"])
        jobs.mark(job, "a", "scored")
    assert jobs.delete_job(gone)
    assert not jobs.delete_job(gone)  # already gone
    with pytest.raises(UnknownJobError):
        jobs.status(gone)
    assert jobs.items(gone) == {}
    assert not jobs.mark(gone, "b", "scored")  # a late delivery does not bring it back
    assert [s.id for s in jobs.list_jobs(None)] == [kept]
    assert jobs.status(kept).scored == 1
    assert jobs.create_job(job_id=gone) == gone and jobs.status(gone).total == 0  # the id is free again


def test_pruning_picks_old_finished_one_off_jobs(jobs: JobStore) -> None:
    finished, unfinished = jobs.create_job(), jobs.create_job()
    watcher, listener = jobs.create_job(job_id="watch-0123456789ab"), jobs.create_job(job_id="listen-redis-x")
    for job in (finished, unfinished, watcher, listener):
        jobs.add_items(job, ["a"])
    for job in (finished, watcher, listener):
        jobs.mark(job, "a", "scored")
    statuses = jobs.list_jobs(None)
    later = time.time() + 3600
    assert [s.id for s in prunable_jobs(statuses, older_than=600, now=later)] == [finished]
    assert {s.id for s in prunable_jobs(statuses, 600, later, include_unfinished=True)} == {finished, unfinished}
    assert prunable_jobs(statuses, older_than=7200, now=later) == []  # not old enough


def test_unknown_job(jobs: JobStore) -> None:
    with pytest.raises(UnknownJobError):
        jobs.status("nope")


def test_delivery_counter_and_counters(jobs: JobStore) -> None:
    assert [jobs.count_delivery("t1") for _ in range(3)] == [1, 2, 3]
    assert jobs.count_delivery("t2") == 1
    jobs.incr_counter("enqueued", 5)
    jobs.incr_counter("enqueued")
    assert jobs.counters()["enqueued"] == 6


def test_state_survives_reopening(tmp_path: Path) -> None:
    first = open_job_store(f"sqlite:///{tmp_path / 'state.db'}")
    job = first.create_job()
    first.add_items(job, ["x"])
    second = open_job_store(f"sqlite:///{tmp_path / 'state.db'}")
    assert second.status(job).total == 1


def test_unsupported_state_url() -> None:
    with pytest.raises(ValueError, match="unsupported job store"):
        open_job_store("postgres://x")


def test_how_each_file_ended_is_kept_bounded_and_escaped(jobs: JobStore) -> None:
    from audioset_batch.jobs.job_store import MESSAGE_LIMIT, ItemEnd

    job = jobs.create_job()
    jobs.add_items(job, ["a", "b", "c"])
    started = jobs.status(job)
    assert (started.clips, started.finished_at) == (0, None)
    assert started.to_json()["eta_seconds"] is None  # no pace before a file has ended
    assert jobs.mark(job, "a", "scored", ItemEnd(clips=40, seconds=1.5))
    hostile = "LayoutError\u202e: <script>" + "x" * 5000  # a message can quote an untrusted file
    assert jobs.mark(job, "b", "failed", ItemEnd(error="LayoutError", message=hostile))
    assert not jobs.mark(job, "b", "scored", ItemEnd(clips=99))  # a late duplicate changes nothing
    running = jobs.status(job)
    assert (running.clips, running.finished, running.finished_at) == (40, False, None)
    assert running.to_json()["eta_seconds"] is not None  # one file left at the pace of the two that ended
    failed = jobs.ends(job, "failed")
    assert list(failed) == ["b"] and failed["b"]["error"] == "LayoutError"
    assert len(failed["b"]["message"]) <= MESSAGE_LIMIT + 10 and "\u202e" not in failed["b"]["message"]
    assert jobs.ends(job)["a"] == {**jobs.ends(job)["a"], "status": "scored", "clips": 40, "seconds": 1.5}
    assert jobs.mark(job, "c", "skipped")
    done = jobs.status(job).to_json()
    assert done["finished"] and done["finished_at"] and done["created_at"].endswith("+00:00")
    assert done["eta_seconds"] == 0 and done["clips"] == 40 and done["seconds"] > 0
    assert jobs.delete_job(job) and jobs.ends(job) == {}


def test_a_state_file_from_before_reasons_were_kept_opens_and_counts(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the schema of earlier releases
        conn.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, name TEXT, created REAL)")
        conn.execute("CREATE TABLE items (job TEXT, source TEXT, status TEXT, PRIMARY KEY (job, source))")
        conn.execute("INSERT INTO jobs VALUES ('j', 'j', 1.0)")
        conn.executemany("INSERT INTO items VALUES ('j', ?, ?)", [("a", "failed"), ("b", "pending")])
    store = SqliteJobStore(path)
    assert store.ends("j", "failed") == {"a": {"status": "failed"}}
    assert store.mark("j", "b", "scored")
    status = store.status("j")
    assert (status.failed, status.scored, status.finished) == (1, 1, True)
    assert (status.queue, status.force) == (None, False)  # a job from before its queue was kept


def test_retry_and_cancel_move_items_with_generations_that_stale_messages_cannot_match(jobs: JobStore) -> None:
    from audioset_batch.jobs.job_store import ItemEnd

    job = jobs.create_job()
    jobs.add_items(job, ["a", "b", "c", "d"])
    jobs.mark(job, "a", "scored", ItemEnd(clips=10))
    jobs.mark(job, "b", "failed", ItemEnd(error="LayoutError", message="bad", url="cos://in/b.h5"))
    assert jobs.retry(job, ["failed"]) == {"b": 1}
    assert jobs.retry(job, ["failed"]) == {}  # twice is harmless: b is pending now
    assert jobs.item_state(job, "b") == ("pending", 1) and jobs.ends(job, "failed") == {}
    assert not jobs.mark(job, "b", "failed", ItemEnd(error="LayoutError"))  # a message from before the retry
    assert jobs.mark(job, "b", "scored", ItemEnd(clips=5), generation=1)
    assert jobs.status(job).clips == 15
    assert jobs.cancel(job) == 2 and jobs.cancel(job) == 0  # c and d; twice is harmless
    status = jobs.status(job)
    assert (status.cancelled, status.pending, status.finished, status.state) == (2, 0, True, "cancelled")
    assert jobs.ends(job, "cancelled")["c"]["message"] == "cancelled before a worker took it"
    assert jobs.mark(job, "c", "scored", ItemEnd(clips=3))  # it was already being scored: it records how it ended
    assert not jobs.mark(job, "d", "cancelled")
    status = jobs.status(job)
    assert (status.scored, status.cancelled, status.clips) == (3, 1, 18)
    assert jobs.retry(job, ["scored", "skipped", "failed", "cancelled"]) == {"a": 1, "b": 2, "c": 1, "d": 1}
    status = jobs.status(job)
    assert (status.pending, status.scored, status.cancelled, status.clips, status.state) == (4, 0, 0, 0, "running")
    with pytest.raises(UnknownJobError):
        jobs.retry("no-such-job", ["failed"])


def test_a_job_keeps_how_its_tasks_are_sent_and_renews_only_pending_items(jobs: JobStore) -> None:
    """What the workers need to send a lost message again alike, and the generation that keeps a late one out."""
    from audioset_batch.jobs.job_store import ItemEnd

    job = jobs.create_job(name="lane", queue="audioset.score", force=True)
    assert (jobs.status(job).queue, jobs.status(job).force) == ("audioset.score", True)
    assert jobs.status(job).to_json()["queue"] == "audioset.score"
    watch = jobs.create_job(name="watch", job_id="watch-1", queue="old")
    assert jobs.create_job(name="watch", job_id="watch-1", queue="new") == watch  # made again at each start
    assert (jobs.status(watch).queue, jobs.status(watch).force) == ("new", False)
    assert jobs.status(jobs.create_job()).queue is None
    jobs.add_items(job, ["a", "b", "c"])
    jobs.mark(job, "a", "scored", ItemEnd(clips=1))
    assert jobs.renew_pending(job, ["a", "b", "c", "not-an-item"]) == {"b": 1, "c": 1}
    assert jobs.renew_pending(job, ["b"]) == {"b": 2}
    assert not jobs.mark(job, "b", "scored", ItemEnd(clips=1), generation=1)  # a message from before the renewal
    assert jobs.mark(job, "b", "scored", ItemEnd(clips=1), generation=2)
    assert jobs.item_state(job, "c") == ("pending", 1) and jobs.status(job).pending == 1
