"""Enrolled nodes for tests: enrolling one through a real manager (in this process, driven tick by
tick, or running), and acting as it: its sealed events and heartbeats, as a worker sends them."""

from __future__ import annotations

import hashlib
import io
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from sqlalchemy import select

from renderfarm import keys, presence, streams
from renderfarm.db import session_scope
from renderfarm.enrollment import NodeCredentials, credentials_for, write_credentials
from renderfarm.frames import frame_name, parse_frames
from renderfarm.models import Attempt, AttemptState, Job, Task
from renderfarm.nodes import Sequence
from renderfarm.status import list_workers
from renderfarm.storage.keys import attempt_prefix
from renderfarm.wire import (
    Done,
    Failed,
    Heartbeat,
    JobSpec,
    Message,
    NodeAddIntent,
    Output,
    Sealed,
    Started,
    SubmitIntent,
    Usage,
    WorkerHoldIntent,
)


def enroll_in_process(manager, name: str, *, pool: str = "default", site: str = "local",
                      tags: tuple[str, ...] = ()) -> NodeCredentials:
    """Enroll a node through a manager this test drives with `tick()` (its clock stepped by the test)."""
    intent = NodeAddIntent(request_id=f"{abs(hash(name)) % 16**32:032x}", name=name, pool=pool, site=site, tags=tags)
    streams.send_intent(manager.r, intent)
    manager.tick()
    reply = streams.await_reply(manager.r, intent.request_id, 5)
    assert reply.ok, reply
    return credentials_for(manager.settings, reply.node, site=site, pool=pool, tags=tags)


def save(credentials: NodeCredentials, folder: Path) -> Path:
    """A node's credentials file (0600), for a `farm-worker --credentials` this test starts."""
    return write_credentials(folder / f"{credentials.name}.farm-node", credentials)


@dataclass
class ActingNode:
    """A test acting as an enrolled node: what it sends is sealed with its key and numbered as a
    worker numbers it."""

    credentials: NodeCredentials
    sequence: Sequence = field(default_factory=Sequence)

    @property
    def name(self) -> str:
        return self.credentials.name

    def sealed(self, message: Message | str, seq: int | None = None) -> str:
        seq = self.sequence.next() if seq is None else seq
        return Sealed.seal(message, node=self.name, seq=seq, key=self.credentials.key).to_json()

    def post(self, r, message: Message | str, seq: int | None = None) -> str:
        """Send an event (or any text, sealed as it is) on this node's own stream."""
        return streams.post(r, keys.event_stream(self.name), self.sealed(message, seq))

    def beat(self, r, ttl: float = 30.0, **fields) -> None:
        fields.setdefault("pid", 1)
        presence.beat(r, self.name, self.sealed(Heartbeat(name=self.name, ttl=ttl, **fields)), ttl)

    def open(self, raw: str) -> dict:
        """A task order sealed for this node, opened (what a worker would render)."""
        return json.loads(Sealed.parse(raw).check(self.credentials.key))


def unenrolled(name: str, settings) -> NodeCredentials:
    """Credentials for a worker this test runs without any manager (nothing checks its seal)."""
    return NodeCredentials(name=name, node_id="n0000000a", key="k" * 32, redis_url=settings.redis_url or "redis://x",
                           storage_url=settings.storage_url)


def events_of(r, name: str, key: str = "k" * 32) -> list:
    """The events a node sent, opened."""
    from renderfarm.wire import parse_event

    return [parse_event(Sealed.parse(fields[b"d"]).check(key)) for _id, fields in r.xrange(keys.event_stream(name))]


def enrolled_worker_argv(settings, name: str, folder: Path, *, python: str | None = None, site: str = "local",
                         pool: str = "default", tags: tuple[str, ...] = ()) -> list[str]:
    """Enroll a node through the running manager and return the command line of its worker, its
    credentials file written in `folder` (start it with an environment free of the farm's secrets:
    `worker_env`)."""
    import sys

    from renderfarm.enrollment import enroll

    path = save(enroll(settings, name, site=site, pool=pool, tags=tags, s3_keys=s3_keys_of(settings)), folder)
    return [python or sys.executable, "-m", "renderfarm_worker", f"--credentials={path}"]


def worker_env(settings, **extra: str) -> dict[str, str]:
    """The environment of a worker process: the farm's settings, none of its secrets."""
    import os

    from renderfarm.config import settings_env
    from renderfarm.localfarm.services import node_env

    return node_env({**os.environ, **settings_env(settings), **extra})


def s3_keys_of(settings) -> tuple[str, str] | None:
    """The storage keys this test's farm uses (the test SeaweedFS's, from the environment), given to
    a node where the manager grants it no S3 identity of its own."""
    import os

    from renderfarm.storage.s3 import local_credentials

    keys_ = local_credentials(settings)
    if keys_ is None and os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        keys_ = (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
    return keys_


def cli_node(env: dict, name: str, folder: Path, *args: str) -> list[str]:
    """`farm node add NAME ...` as an admin types it; returns the command line of the node's worker
    (its credentials file in `folder`), to start with `node_env(env)`."""
    from conftest import BIN, run_farm

    path = folder / f"{name}.farm-node"
    run_farm("node", "add", name, "-o", str(path), *args, env=env)
    return [str(BIN / "farm-worker"), "--credentials", str(path)]


SHA = "ab" * 32
SPEC = JobSpec(name="shot", owner="ana", renderer="null", scene_name="shot.toml", scene_key=f"scenes/{SHA}.toml",
               scene_sha256=SHA, frames="1-6", width=64, height=36)


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 36), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png()


@contextmanager
def stepped_farm(redis_url: str, tmp_path: Path, names: tuple[str, ...] = ("a", "b"), **kwargs):
    """A SteppedFarm of enrolled nodes `names` on a manager in this process (its settings from
    `tests/test_manager_loop.in_process_manager`, with `kwargs`), closed after."""
    from test_manager_loop import in_process_manager

    manager = in_process_manager(redis_url, tmp_path, **kwargs)
    try:
        yield SteppedFarm(manager, names)
    finally:
        manager.engine.dispose()


class SteppedFarm:
    """A manager in this process and enrolled nodes the test acts as, stepped by the test: the
    nodes beat, start attempts and render them (a real PNG where the manager looks for it)."""

    def __init__(self, manager, names: tuple[str, ...], sites: dict[str, str] | None = None) -> None:
        self.manager = manager
        self.nodes = {name: ActingNode(enroll_in_process(manager, name, site=(sites or {}).get(name, "local")))
                      for name in names}
        self.requests = 0

    def beat(self, *names: str) -> None:
        for name in names or tuple(self.nodes):
            self.nodes[name].beat(self.manager.r, ttl=30.0)
        self.manager.tick()

    def ask(self, intent) -> object:
        streams.send_intent(self.manager.r, intent)
        self.manager.tick()
        return streams.await_reply(self.manager.r, intent.request_id, 5)

    def request_id(self) -> str:
        self.requests += 1
        return f"{self.requests:032x}"

    def hold(self, name: str, hold: str):
        return self.ask(WorkerHoldIntent(request_id=self.request_id(), name=name, hold=hold))

    def submit(self, spec: JobSpec = SPEC) -> str:
        reply = self.ask(SubmitIntent(request_id=self.request_id(), job=spec))
        assert reply.ok, reply
        return reply.job_id

    def start(self, attempt_id: int) -> None:
        """Act as the attempt's node: it starts rendering."""
        worker = next(w for a, w, _ in self.attempts() if a == attempt_id)
        self.nodes[worker].post(self.manager.r, Started(worker=worker, attempt_id=attempt_id, elapsed=0.1))
        self.manager.tick()

    def task_id(self, index: int) -> int:
        with session_scope(self.manager.engine) as s:
            return s.scalars(select(Task.id).where(Task.index == index)).one()

    def task_of(self, attempt_id: int) -> int:
        """The index of an attempt's task."""
        with session_scope(self.manager.engine) as s:
            return s.get(Task, s.get(Attempt, attempt_id).task_id).index

    def fail(self, attempt_id: int) -> None:
        """Act as the attempt's node: its render failed."""
        worker = next(w for a, w, _ in self.attempts() if a == attempt_id)
        self.nodes[worker].post(self.manager.r, Failed(worker=worker, attempt_id=attempt_id, error="it broke"))
        self.manager.tick()

    def tasks(self) -> dict[int, str]:
        """Task index -> state, of the one job."""
        with session_scope(self.manager.engine) as s:
            return dict(s.execute(select(Task.index, Task.state).order_by(Task.index)).all())

    def attempts(self, state: AttemptState | None = None) -> list[tuple[int, str, str]]:
        """(attempt id, worker, state), oldest first."""
        with session_scope(self.manager.engine) as s:
            query = select(Attempt.id, Attempt.worker, Attempt.state).order_by(Attempt.id)
            if state is not None:
                query = query.where(Attempt.state == state.value)
            return [tuple(row) for row in s.execute(query).all()]

    def render_all(self) -> None:
        """Render whatever is queued, as its nodes, until nothing is."""
        while queued := self.attempts(AttemptState.QUEUED):
            for attempt_id, _, _ in queued:
                self.render(attempt_id)
            self.beat()

    def render(self, attempt_id: int, wall: float = 1.0) -> None:
        """Act as the attempt's node: start it, upload its frames where the manager looks, report it."""
        with session_scope(self.manager.engine) as s:
            attempt = s.get(Attempt, attempt_id)
            task, job = s.get(Task, attempt.task_id), s.get(Job, attempt.job_id)
            worker, frames = attempt.worker, parse_frames(task.frames)
            prefix = attempt_prefix(worker, job.id, task.index, attempt.number)
            keys_ = {frame: prefix + frame_name(job.name, frame, "png") for frame in frames}
        node = self.nodes[worker]
        node.post(self.manager.r, Started(worker=worker, attempt_id=attempt_id, elapsed=0.1))
        frame_file = Path(self.manager.settings.state_dir) / "frame.png"
        frame_file.write_bytes(PNG)
        sha = hashlib.sha256(PNG).hexdigest()
        for key in keys_.values():
            self.manager.storage.put_file(key, frame_file, sha256=sha)  # as a worker does
        node.post(self.manager.r, Done(worker=worker, attempt_id=attempt_id, usage=Usage(wall=wall), outputs=tuple(
            Output(frame=frame, sha256=sha, size=len(PNG)) for frame in keys_)))
        self.manager.tick()

    def shown(self) -> dict[str, str]:
        live = {name: {"state": "idle"} for name in self.nodes}
        with session_scope(self.manager.engine) as s:
            return {w.name: w.state for w in list_workers(s, live)}

    def cli(self, *args: str) -> str:
        """`farm ARGS` against this farm (its manager counts as running); its stdout."""
        from conftest import farm_env, run_farm

        s = self.manager.settings
        self.manager.r.set(keys.MANAGER_LEADER, "in-process")
        env = farm_env(Path(s.state_dir), FARM_REDIS_URL=s.redis_url, FARM_DATABASE_URL=s.database_url,
                       FARM_STORAGE_URL=s.storage_url, COLUMNS="200")
        return run_farm(*args, env=env).stdout

    def job_state(self) -> str:
        with session_scope(self.manager.engine) as s:
            return s.scalars(select(Job.state)).one()
