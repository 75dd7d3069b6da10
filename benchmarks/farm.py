"""A throwaway local farm for benchmarks: its own state directory, stopped on exit."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from renderfarm.config import Settings, load_settings


@contextmanager
def temporary_farm(workers: int, **env: str) -> Iterator[Settings]:
    """Start Valkey, SeaweedFS, the manager and `workers` workers in a temporary state directory."""
    from renderfarm.localfarm import LocalFarm

    state = Path(tempfile.mkdtemp(prefix="rf-bench-"))
    saved = {k: os.environ.get(k) for k in ("FARM_STATE_DIR", *env)}
    os.environ["FARM_STATE_DIR"] = str(state)
    os.environ.update(env)
    farm = LocalFarm(load_settings())
    try:
        farm.up(workers, detach=False)
        yield load_settings()
    finally:
        farm.down()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(state, ignore_errors=True)


def wait_for_job(settings: Settings, job_id: str, timeout: float = 3600) -> float:
    """Poll the database until the job is finished; returns when it finished, by the manager's own
    clock (time.time() on this machine). The manager records that time, so polling can be gentle:
    a poll every 20 ms would take a few percent of a core from the renders being measured."""
    from renderfarm.db import make_engine, session_scope
    from renderfarm.models import Job

    engine = make_engine(settings.database_url)
    start = time.monotonic()
    deadline = start + timeout
    try:
        while time.monotonic() < deadline:
            with session_scope(engine) as session:
                job = session.get(Job, job_id)
                if job is not None and job.state in ("done", "failed", "cancelled"):
                    if job.state != "done":
                        raise RuntimeError(f"job {job_id} ended {job.state}: {job.error}")
                    return job.finished_at or time.time()
            time.sleep(min(0.02 + (time.monotonic() - start) / 50, 0.25))
    finally:
        engine.dispose()
    raise TimeoutError(f"job {job_id} did not finish within {timeout:g} s")
