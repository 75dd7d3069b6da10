"""`farm worker drain|disable|enable`: a held worker finishes what it renders and is given nothing
new; a drain ends when the worker leaves the farm, a disable lasts across its restarts and the
manager's. The manager runs in-process on a real Valkey, SQLite and file storage, its clock
stepped by the test; the nodes are the test acting as enrolled nodes, uploading real PNGs that
the manager checks."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from conftest import farm_env, run_farm
from nodekit import ActingNode, enroll_in_process
from PIL import Image
from sqlalchemy import select
from test_manager_loop import in_process_manager

from renderfarm import streams
from renderfarm.db import session_scope
from renderfarm.frames import frame_name
from renderfarm.models import Attempt, AttemptState, Job, Task
from renderfarm.status import list_workers
from renderfarm.storage.keys import attempt_prefix
from renderfarm.wire import (
    Bye,
    Done,
    JobSpec,
    Output,
    Started,
    SubmitIntent,
    Usage,
    WireError,
    WorkerHoldIntent,
)

SHA = "ab" * 32
SPEC = JobSpec(name="shot", owner="ana", renderer="null", scene_name="shot.toml", scene_key=f"scenes/{SHA}.toml",
               scene_sha256=SHA, frames="1-6", width=64, height=36)


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 36), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png()


class Farm:
    """A manager and its acting nodes, stepped by the test."""

    def __init__(self, manager, names: tuple[str, ...]) -> None:
        self.manager = manager
        self.nodes = {name: ActingNode(enroll_in_process(manager, name)) for name in names}
        self.requests = 0

    def beat(self, *names: str) -> None:
        for name in names or tuple(self.nodes):
            self.nodes[name].beat(self.manager.r, ttl=30.0)
        self.manager.tick()

    def ask(self, intent) -> object:
        streams.send_intent(self.manager.r, intent)
        self.manager.tick()
        return streams.await_reply(self.manager.r, intent.request_id, 5)

    def hold(self, name: str, hold: str):
        self.requests += 1
        return self.ask(WorkerHoldIntent(request_id=f"{self.requests:032x}", name=name, hold=hold))

    def attempts(self, state: AttemptState | None = None) -> list[tuple[int, str, str]]:
        """(attempt id, worker, state), oldest first."""
        with session_scope(self.manager.engine) as s:
            query = select(Attempt.id, Attempt.worker, Attempt.state).order_by(Attempt.id)
            if state is not None:
                query = query.where(Attempt.state == state.value)
            return [tuple(row) for row in s.execute(query).all()]

    def render(self, attempt_id: int) -> None:
        """Act as the attempt's node: start it, upload its frame where the manager looks, report it."""
        with session_scope(self.manager.engine) as s:
            attempt = s.get(Attempt, attempt_id)
            task, job = s.get(Task, attempt.task_id), s.get(Job, attempt.job_id)
            worker, frame = attempt.worker, task.first_frame
            key = attempt_prefix(worker, job.id, task.index, attempt.number) + frame_name(job.name, frame, "png")
        node = self.nodes[worker]
        node.post(self.manager.r, Started(worker=worker, attempt_id=attempt_id, elapsed=0.1))
        self.manager.storage.put_bytes(key, PNG)
        node.post(self.manager.r, Done(worker=worker, attempt_id=attempt_id, usage=Usage(wall=1.0), outputs=(
            Output(frame=frame, sha256=hashlib.sha256(PNG).hexdigest(), size=len(PNG)),)))
        self.manager.tick()

    def shown(self) -> dict[str, str]:
        live = {name: {"state": "idle"} for name in self.nodes}
        with session_scope(self.manager.engine) as s:
            return {w.name: w.state for w in list_workers(s, live)}

    def job_state(self) -> str:
        with session_scope(self.manager.engine) as s:
            return s.scalars(select(Job.state)).one()


@pytest.fixture()
def farm(redis_url: str, tmp_path: Path):
    manager = in_process_manager(redis_url, tmp_path)
    farm = Farm(manager, ("a", "b"))
    yield farm
    manager.engine.dispose()


def test_a_drained_worker_finishes_its_render_takes_nothing_new_and_shows_drained(farm: Farm) -> None:
    farm.beat("a")  # only a is there yet: it is given a render and a prefetch
    assert farm.ask(SubmitIntent(request_id="5" * 32, job=SPEC)).ok
    farm.beat("a")
    mine = [a for a, w, _ in farm.attempts() if w == "a"]
    assert len(mine) == 2, farm.attempts()
    farm.nodes["a"].post(farm.manager.r, Started(worker="a", attempt_id=mine[0], elapsed=0.1))
    farm.manager.tick()

    reply = farm.hold("a", "drain")
    assert reply.ok and reply.changed and reply.state == "draining", reply
    # Its prefetched attempt went back; the one it renders is still its own.
    assert [(a, s) for a, w, s in farm.attempts() if w == "a"] == [(mine[0], "running"), (mine[1], "cancelled")]
    assert farm.shown()["a"] == "draining"
    assert farm.hold("a", "drain").changed is False  # safe to repeat

    farm.beat("a", "b")  # b arrives: the rest goes to b only
    farm.render(mine[0])
    assert farm.shown() == {"a": "drained", "b": "idle"}
    while farm.job_state() != "done":
        queued = farm.attempts(AttemptState.QUEUED)
        assert queued, farm.attempts()
        for attempt_id, worker, _ in queued:
            assert worker == "b", f"the drained worker was given attempt {attempt_id}"
            farm.render(attempt_id)
        farm.beat()
    assert [w for _, w, s in farm.attempts() if s == "done"].count("a") == 1

    assert farm.hold("a", "enable").state == "enabled"
    assert farm.shown()["a"] == "idle"


def test_a_disable_lasts_across_restarts_and_a_drain_ends_when_its_worker_leaves(
        farm: Farm, redis_url: str, tmp_path: Path) -> None:
    assert farm.hold("a", "disable").state == "disabled"
    assert farm.hold("b", "drain").state == "drained"
    for name in ("a", "b"):  # both workers stop and start again
        farm.nodes[name].post(farm.manager.r, Bye(worker=name))
    farm.manager.tick()
    farm.beat()
    assert farm.shown() == {"a": "disabled", "b": "idle"}
    assert farm.ask(SubmitIntent(request_id="6" * 32, job=SPEC)).ok
    farm.beat()
    assert {w for _, w, _ in farm.attempts()} == {"b"}

    # The manager starts again: the disable is in the database.
    farm.manager.engine.dispose()
    again = in_process_manager(redis_url, tmp_path)
    farm.manager = again
    farm.render(farm.attempts(AttemptState.QUEUED)[0][0])
    farm.beat()
    assert {w for _, w, _ in farm.attempts()} == {"b"}
    assert farm.shown()["a"] == "disabled"
    assert farm.hold("a", "enable").changed
    farm.beat()
    assert "a" in {w for _, w, _ in farm.attempts(AttemptState.QUEUED)}


def test_a_hold_of_a_node_that_is_not_enrolled_is_refused_in_one_line(farm: Farm) -> None:
    reply = farm.hold("nobody", "drain")
    assert not reply.ok and reply.error == "worker 'nobody': no such enrolled node (`farm node list` shows them)"
    with pytest.raises(WireError, match="hold"):
        WorkerHoldIntent.parse('{"type": "worker", "request_id": "' + "1" * 32 + '", "name": "a", "hold": "nap"}')


def test_the_cli_names_a_bad_worker_in_one_line(tmp_path: Path) -> None:
    env = farm_env(tmp_path / "state")
    bad = run_farm("worker", "drain", "no/such", env=env, check=False)
    assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0 and "no/such" in bad.stderr, bad
    down = run_farm("worker", "disable", "a", env=env, check=False)
    assert down.returncode != 0 and "not running" in down.stderr, down
