"""The CLI's fast plain-SQL reads agree with the ORM views, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from test_db import complete, create, engine, progress, queue, start  # noqa: F401  (fixtures and steps)

from renderfarm.config import load_settings
from renderfarm.db import session_scope
from renderfarm.errors import NotFoundError
from renderfarm.lifecycle import record_usage
from renderfarm.models import Attempt, Job
from renderfarm.quickread import QuickReader
from renderfarm.sites import Site, account
from renderfarm.status import job_status, list_jobs


def reader_for(url: str, tmp_path) -> QuickReader:
    return QuickReader.open(load_settings({"FARM_STATE_DIR": str(tmp_path), "FARM_DATABASE_URL": url}, cwd=tmp_path))


def test_quick_reads_match_the_orm(engine, database_url, tmp_path):  # noqa: F811
    first = create(engine, "abc00001", "1-10", 4, submitted_at=1000.0)
    second = create(engine, "abd00002", "1-6", 1, submitted_at=2000.0)
    done = queue(engine, first, 0, "w1", 1001.0)
    start(engine, done, 1002.0)
    complete(engine, done, 1003.0)
    running = queue(engine, first, 1, "w2", 1001.5)
    start(engine, running, 1002.5)
    progress(engine, running, 0.5)
    with session_scope(engine) as s:
        site = Site("karamay", price_micros=400_000, currency="CNY", carbon_mg_per_kwh=560_000)
        record_usage(s, s.get(Attempt, done), "karamay", account(site, wall_seconds=7.2, cpu_seconds=7.0), wall=7.2, cpu=7.0)
    reader = reader_for(database_url, tmp_path)
    try:
        with session_scope(engine) as s:
            for job_id in (first, second):
                assert reader.job_status(job_id, now=5000.0) == job_status(s, s.get(Job, job_id), now=5000.0)
            assert reader.list_jobs(10, now=5000.0) == [job_status(s, j, now=5000.0) for j in
                                                        [s.get(Job, second), s.get(Job, first)]]
            assert [j.id for j in list_jobs(s, 10)] == [j.id for j in reader.list_jobs(10)]
        status = reader.job_status("abc", now=5000.0)
        assert status.id == first and status.cost == {"CNY": 0.00008}  # 100 W for 7.2 s = 200 micro-kWh at 0.4
        assert (status.counts["done"], status.counts["running"], status.frames_done) == (1, 1, 4)
        with pytest.raises(NotFoundError, match="ambiguous prefix"):
            reader.job_status("ab")
        with pytest.raises(NotFoundError, match="no such job"):
            reader.job_status("ffff")
        with pytest.raises(NotFoundError, match="not a job id"):
            reader.job_status("a'; drop table jobs; --")
    finally:
        reader.close()
