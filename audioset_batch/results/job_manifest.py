"""A job's manifest in the results bucket: which files a job covered and how each ended, for whoever reads the
results downstream (as a batch-prediction service writes its completion stats beside its outputs).

``<results-prefix>_jobs/<job>.json``: one JSON object, rewritten whole (one PUT) by one writer from the job store
while the job runs and once it ends; never by each worker per file.
"""

from __future__ import annotations

from typing import Any

from audioset_batch.jobs.job_store import JobStatus, JobStore, iso, item_url
from audioset_batch.results.keys import item_result_keys

MANIFEST_VERSION = 1
MANIFEST_FOLDER = "_jobs/"


def manifest_key(results_prefix: str, job_id: str) -> str:
    return f"{results_prefix}{MANIFEST_FOLDER}{job_id}.json"


def _results(url: str, status: str, results_prefix: str) -> dict[str, str | None]:
    """Where the file's results are (relative to the results bucket), by what it ended as."""
    keys = item_result_keys(url, results_prefix)
    if keys is None:
        return {"jsonl": None, "summary": None, "error": None}
    scored = status in ("scored", "skipped")
    return {
        "jsonl": keys.jsonl if scored else None,
        "summary": keys.summary if scored else None,
        "error": keys.error if status == "failed" else None,
    }


def build_manifest(
    status: JobStatus, items: dict[str, str], ends: dict[str, dict[str, Any]], model: str, results_prefix: str
) -> dict[str, Any]:
    """The manifest of one job from its state: totals, times and pace as ``jobs status --json`` gives them,
    then one entry per file, in item order."""
    files = []
    for item in sorted(items):
        end, file_status = ends.get(item, {}), items[item]
        url = item_url(item, end)
        files.append(
            {
                "item": item,
                "url": url,
                "status": file_status,
                "error": end.get("error"),
                "message": end.get("message"),
                "clips": end.get("clips", 0),
                "seconds": end.get("seconds"),
                "ended_at": iso(end.get("at")),
                "results": _results(url, file_status, results_prefix),
            }
        )
    return {"version": MANIFEST_VERSION, "job": status.to_json(), "model": model, "files": files}


def job_manifest(store: JobStore, job_id: str, model: str, results_prefix: str) -> dict[str, Any]:
    return build_manifest(store.status(job_id), store.items(job_id), store.ends(job_id), model, results_prefix)
