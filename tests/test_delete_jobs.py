"""`farm delete` and `farm archive` of jobs, and retention (FARM_RETENTION_DAYS), against a real
manager in this process (Valkey, SQLite, file storage) whose nodes the test acts as: what each
leaves in storage, a deletion that a manager dies in the middle of, and listings."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from nodekit import PNG, SPEC, SteppedFarm
from sqlalchemy import select
from test_manager_loop import in_process_manager

from renderfarm.clock import SteppedClock
from renderfarm.db import session_scope
from renderfarm.downloads import download
from renderfarm.frames import frame_name, parse_frames
from renderfarm.manager import removal
from renderfarm.models import Attempt, AttemptState, Job, Purge, Task
from renderfarm.quickread import QuickReader
from renderfarm.storage.files import FileStorage
from renderfarm.storage.keys import attempt_prefix
from renderfarm.wire import ArchiveIntent, DeleteIntent, Done, Output, Started, Usage

SHA_PNG = hashlib.sha256(PNG).hexdigest()


def render(farm: SteppedFarm) -> None:
    """Act as the nodes until nothing is queued: each attempt uploads every frame of its task,
    its log and a scratch file nothing needs, as a worker would."""
    storage = farm.manager.storage
    frame_file = Path(farm.manager.settings.state_dir) / "frame.png"
    frame_file.write_bytes(PNG)
    while queued := farm.attempts(AttemptState.QUEUED):
        for attempt_id, worker, _ in queued:
            with session_scope(farm.manager.engine) as s:
                attempt = s.get(Attempt, attempt_id)
                task, job = s.get(Task, attempt.task_id), s.get(Job, attempt.job_id)
                prefix = attempt_prefix(worker, job.id, task.index, attempt.number)
                frames, name = parse_frames(task.frames), job.name
            node = farm.nodes[worker]
            node.post(farm.manager.r, Started(worker=worker, attempt_id=attempt_id, elapsed=0.1))
            for frame in frames:
                storage.put_file(prefix + frame_name(name, frame, "png"), frame_file, sha256=SHA_PNG)
            storage.put_bytes(prefix + "log.txt", b"rendered\n")
            storage.put_bytes(prefix + "scratch/cache.bin", b"x" * 10)
            outputs = tuple(Output(frame=f, sha256=SHA_PNG, size=len(PNG)) for f in frames)
            node.post(farm.manager.r, Done(worker=worker, attempt_id=attempt_id, usage=Usage(wall=1.0),
                                           outputs=outputs, log_key=prefix + "log.txt"))
            farm.manager.tick()
        farm.beat()
    farm.manager.delete_doomed(now=True)  # the promoted frames' attempt copies, as the manager does


def keys(farm: SteppedFarm, prefix: str = "") -> set[str]:
    return {o.key for o in FileStorage(farm.manager.storage.root, "file://").list(prefix)}


def of_job(all_keys: set[str], job_id: str) -> set[str]:
    """The keys under the job's own prefixes, exactly (not those of a job whose id starts with it)."""
    return {k for k in all_keys if k.startswith(f"jobs/{job_id}/") or f"/jobs/{job_id}/" in k}


def purged(farm: SteppedFarm, clock: SteppedClock, timeout: float = 30.0) -> None:
    """Tick (the clock stepped) until every purge is done."""
    from conftest import wait_for

    def done() -> bool:
        clock.advance(1.0)
        farm.manager.tick()
        with session_scope(farm.manager.engine) as s:
            return s.scalar(select(Purge.id).where(Purge.done_at.is_(None)).limit(1)) is None

    wait_for(done, timeout, "every purge to be done", interval=0.05)


def listed(farm: SteppedFarm, *, archived: bool) -> list[str]:
    reader = QuickReader.open(farm.manager.settings)
    try:
        return [j.id for j in reader.list_jobs(archived=archived)]
    finally:
        reader.close()


@pytest.fixture()
def farm(redis_url: str, tmp_path: Path):
    clock = SteppedClock()
    manager = in_process_manager(redis_url, tmp_path, clock, env={"FARM_RETENTION_DAYS": "2"})
    farm = SteppedFarm(manager, ("w1", "w2"))
    farm.clock = clock
    farm.beat()
    yield farm
    manager.purger.close()
    manager.engine.dispose()


def test_delete_removes_a_done_job_and_nothing_of_another(farm: SteppedFarm) -> None:
    gone, kept = farm.submit(SPEC), farm.submit(SPEC)
    render(farm)
    storage = farm.manager.storage
    # A job whose id starts with the deleted one's: a prefix without its `/` would reach it.
    for key in (f"jobs/{gone}0/frames/x.png", f"nodes/w1/jobs/{gone}0/0/1/x.png"):
        storage.put_bytes(key, b"not yours")
    before = keys(farm)
    assert of_job(before, gone) and of_job(before, kept)
    assert any(k.startswith(f"nodes/w1/jobs/{gone}/") for k in before)

    reply = farm.ask(DeleteIntent(request_id=farm.request_id(), job=gone))
    assert (reply.ok, reply.state, reply.changed) == (True, "deleted", True)
    purged(farm, farm.clock)
    after = keys(farm)
    assert of_job(after, gone) == set()
    assert after == before - of_job(before, gone)  # the other job's objects, and the look-alike's, all there
    assert gone not in listed(farm, archived=True) and kept in listed(farm, archived=True)
    with session_scope(farm.manager.engine) as s:
        assert s.get(Job, gone) is None
        assert s.scalars(select(Task).where(Task.job_id == gone)).all() == []
        assert s.scalars(select(Attempt).where(Attempt.job_id == gone)).all() == []

    again = farm.ask(DeleteIntent(request_id=farm.request_id(), job=gone))  # safe to repeat
    assert (again.ok, again.state, again.changed) == (True, "deleted", False)
    refused = farm.ask(ArchiveIntent(request_id=farm.request_id(), job=gone))
    assert not refused.ok and refused.error == f"job '{gone}': no such job"


def test_delete_keep_frames_and_an_unfinished_job(farm: SteppedFarm) -> None:
    done = farm.submit(SPEC)
    render(farm)
    frames = keys(farm, f"jobs/{done}/frames/")
    assert len(frames) == 6
    farm.ask(DeleteIntent(request_id=farm.request_id(), job=done, keep_frames=True))
    purged(farm, farm.clock)
    assert of_job(keys(farm), done) == frames

    queued = farm.submit(SPEC)
    reply = farm.ask(DeleteIntent(request_id=farm.request_id(), job=queued))
    assert not reply.ok
    assert reply.error.startswith(f"job {queued} is ") and "farm delete --cancel" in reply.error
    reply = farm.ask(DeleteIntent(request_id=farm.request_id(), job=queued, cancel=True))
    assert (reply.ok, reply.changed) == (True, True)
    with session_scope(farm.manager.engine) as s:
        assert s.get(Job, queued) is None


class DyingStorage(FileStorage):
    """The real file storage, whose manager dies after deleting `left` more keys."""

    def __init__(self, real: FileStorage, left: int) -> None:
        super().__init__(real.root, real.url)
        self.left = left

    def delete(self, keys_: list[str]) -> None:
        for key in keys_:
            if self.left == 0:
                raise RuntimeError("the manager was killed here")
            super().delete([key])
            self.left -= 1


def test_a_manager_killed_while_deleting_a_500_frame_job_finishes_after_restart(
        farm: SteppedFarm, redis_url: str, tmp_path: Path, monkeypatch) -> None:
    from conftest import wait_for

    monkeypatch.setattr(removal, "PURGE_BATCH", 100)  # several batches: killed between and within
    big = farm.submit(SPEC.model_copy(update={"frames": "1-500", "chunk": 50}))
    other = farm.submit(SPEC)
    render(farm)
    before = keys(farm)
    assert len(keys(farm, f"jobs/{big}/frames/")) == 500
    doomed = of_job(before, big)

    first = farm.manager
    first.storage = first.purger.storage = DyingStorage(first.storage, left=250)
    farm.ask(DeleteIntent(request_id=farm.request_id(), job=big))

    def died() -> bool:
        farm.clock.advance(1.0)
        first.tick()
        return first.purger.storage.left == 0 and first.purger._running is None
    wait_for(died, 30, "the deletion to be cut short", interval=0.05)
    halfway = keys(farm)
    assert 0 < len(doomed & halfway) < len(doomed)  # killed in the middle
    first.purger.close()  # the first manager is gone; a second one starts on the same farm
    first.engine.dispose()

    second = in_process_manager(redis_url, tmp_path, farm.clock)
    farm.manager = second
    purged(farm, farm.clock)
    after = keys(farm)
    assert of_job(after, big) == set()
    assert after == before - doomed and of_job(after, other)
    with session_scope(second.engine) as s:
        rows = s.scalars(select(Purge).where(Purge.job_id == big)).all()
        # Two whole batches recorded before the kill; the second manager deleted what was left.
        assert sum(p.deleted for p in rows) == 2 * 100 + len(doomed & halfway)
    second.purger.close()
    second.engine.dispose()


def test_archive_hides_a_job_and_deletes_its_attempts_data_keeping_frames_and_logs(farm: SteppedFarm) -> None:
    job = farm.submit(SPEC)
    render(farm)
    before = keys(farm)
    scratch = {k for k in before if "/scratch/" in k and f"/jobs/{job}/" in k}
    assert scratch
    reply = farm.ask(ArchiveIntent(request_id=farm.request_id(), job=job))
    assert (reply.ok, reply.state, reply.changed) == (True, "done", True)
    purged(farm, farm.clock)
    assert keys(farm) == before - scratch  # frames and logs stay
    assert job not in listed(farm, archived=False) and job in listed(farm, archived=True)
    again = farm.ask(ArchiveIntent(request_id=farm.request_id(), job=job))
    assert (again.ok, again.changed) == (True, False)

    queued = farm.submit(SPEC)
    refused = farm.ask(ArchiveIntent(request_id=farm.request_id(), job=queued))
    assert not refused.ok and "only a done, failed or cancelled job is archived" in refused.error


def test_retention_archives_old_finished_jobs_and_their_frames_still_download(farm: SteppedFarm,
                                                                              tmp_path: Path) -> None:
    old = farm.submit(SPEC)
    render(farm)
    before = keys(farm)
    scratch = {k for k in before if "/scratch/" in k}
    assert scratch
    farm.clock.advance(3 * 86400)  # the retention is 2 days
    farm.beat()
    new = farm.submit(SPEC)
    render(farm)
    purged(farm, farm.clock)
    after = keys(farm)
    assert listed(farm, archived=False) == [new]
    with session_scope(farm.manager.engine) as s:
        assert s.get(Job, old).archived_at is not None and s.get(Job, new).archived_at is None
    assert of_job(after, old) == of_job(before, old) - scratch  # its frames and logs stay
    assert any("/scratch/" in k for k in of_job(after, new))  # a recent job keeps everything
    got = download(farm.manager.settings, old, tmp_path / "out")
    assert (len(got.paths), got.missing, got.failed) == (6, [], [])
    assert all(path.read_bytes() == PNG for path in got.paths)

