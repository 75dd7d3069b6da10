"""Simulated render nodes for the scale benchmark: many enrolled nodes in one process, each acting
as itself with the farm's own code, their renders taking no time.

    python -m benchmarks.simnode --record PATH CREDENTIALS...

Each node is one credentials file (`farm node add`'s, 0600) and acts only as that node: its own
Valkey user (the credentials' redis_url), its own heartbeat key and event stream, everything it
sends sealed with its own key and numbered as a worker numbers it, its own RQ queue (taken from
as RQ's one-queue worker takes: BLMOVE into the queue's intermediate list), each task order opened
and checked by the worker's own code (WorkerRuntime.open_order), the lease checked before the
render and again before reporting it (as farm-worker does), and the null renderer's image uploaded
under the attempt's own prefix with the node's own S3 identity. Each node has one thread for its
queue; one thread per process beats for them all. On SIGTERM the process writes, per task, when
its done event was posted (this machine's clock), to the record file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from renderfarm.config import Settings
    from renderfarm.enrollment import NodeCredentials
    from renderfarm.wire import Heartbeat, Message, TaskOrder

TAKE_TIMEOUT = 1  # seconds a node's blocking take waits before it looks at the stop flag


class Images:
    """The null renderer's image for each (format, width, height), written once per process."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self._made: dict[tuple[str, int, int], tuple[Path, str, int]] = {}
        self._lock = threading.Lock()

    def of(self, order: TaskOrder) -> tuple[Path, str, int]:
        """The image an order's frames would be: its file, SHA-256 and size."""
        from renderfarm.renderers.null import _write_flat

        shape = (order.format, order.width, order.height)
        with self._lock:
            if shape not in self._made:
                path = self.scratch / f"{len(self._made)}.{order.ext}"
                _write_flat(str(path), order.width, order.height, order.format, 0.5)
                data = path.read_bytes()
                self._made[shape] = (path, hashlib.sha256(data).hexdigest(), len(data))
            return self._made[shape]


class SimNode:
    """One enrolled node, acting as itself: what a farm-worker with these credentials sends and
    writes for a task, minus the render."""

    def unseal(self, raw: object, what: str):
        """The worker's own check of a seal (WorkerRuntime.open_order calls it)."""
        from renderfarm_worker.runtime import WorkerRuntime

        return WorkerRuntime.unseal(self, raw, what)

    def __init__(self, credentials: NodeCredentials, settings: Settings) -> None:
        from renderfarm import keys
        from renderfarm.nodes import Sequence
        from renderfarm.redisconn import connect
        from renderfarm.storage import open_storage

        self.credentials = credentials
        self.settings = credentials.settings(settings)  # the farm as this node reaches it
        self.r = connect(self.settings)  # as node-NAME: its ACL allows its own keys alone
        s3_keys = (credentials.s3_access_key, credentials.s3_secret_key) if credentials.s3_access_key else None
        self.storage = open_storage(self.settings, s3_keys)
        self.stream = keys.event_stream(self.name)
        self.queue = f"rq:queue:{keys.queue_name(self.name)}"
        self.events = Sequence()  # its events, posted from its own thread only: in order
        self.beats = Sequence()  # its heartbeats, from the process's beating thread
        self.beat_count = 0
        self.started = time.monotonic()
        self.holding: dict[int, str] = {}  # attempt id -> its label, while it is being worked on

    @property
    def name(self) -> str:
        return self.credentials.name

    def post(self, event: Message) -> None:
        """One event on this node's own stream, sealed with its key."""
        from renderfarm import streams
        from renderfarm.wire import Sealed

        streams.post(self.r, self.stream, Sealed.seal(event, node=self.name, seq=self.events.next(),
                                                      key=self.credentials.key).to_json())

    def heartbeat(self) -> Heartbeat:
        from renderfarm import __version__
        from renderfarm.wire import Capabilities, Heartbeat

        self.beat_count += 1
        held = dict(self.holding)
        first = next(iter(held.values()), None)
        creds = self.credentials
        return Heartbeat(
            name=self.name, host="simulator", pid=os.getpid(), pool=creds.pool, site=creds.site, cores=1,
            version=__version__, uptime=round(time.monotonic() - self.started, 3),
            state="busy" if held else "idle", task=first.split("/")[0] if first else None,
            attempts=tuple(list(held)[:16]), ttl=self.settings.heartbeat_ttl, seq=self.beat_count,
            capabilities=Capabilities(renderers={"null": __version__}, cores=1, tags=creds.tags),
        )

    def beat(self) -> None:
        from renderfarm import presence
        from renderfarm.wire import Sealed

        sealed = Sealed.seal(self.heartbeat(), node=self.name, seq=self.beats.next(), key=self.credentials.key)
        presence.beat(self.r, self.name, sealed.to_json(), self.settings.heartbeat_ttl)

    def take(self) -> str | None:
        """The RQ id of the next job on this node's queue, moved to its intermediate list as RQ's
        one-queue worker moves it; None after TAKE_TIMEOUT seconds of an empty queue."""
        rq_id = self.r.blmove(self.queue, f"{self.queue}:intermediate", TAKE_TIMEOUT, "LEFT", "RIGHT")
        return rq_id.decode() if isinstance(rq_id, bytes) else rq_id

    def work(self, rq_id: str, images: Images) -> tuple[int, float] | None:
        """One queued job, as farm-worker runs it with the null renderer, minus the render: the
        task and when its done event was posted, or None if it was not ours to render."""
        from renderfarm_worker.rqworker import refusal
        from renderfarm_worker.runtime import WorkerRuntime
        from rq.job import Job
        from rq.serializers import JSONSerializer

        from renderfarm import queues
        from renderfarm.wire import Done, Output, Progress, Started, Usage

        begun = time.monotonic()
        job = Job.fetch(rq_id, connection=self.r, serializer=JSONSerializer)
        pipe = self.r.pipeline(transaction=False)  # result_ttl=0: RQ drops a finished job
        pipe.lrem(f"{self.queue}:intermediate", 1, rq_id)
        pipe.delete(job.key)
        pipe.execute()
        why = refusal(job)
        if why:
            raise RuntimeError(f"{self.name}: job {rq_id} refused: {why}")
        order = WorkerRuntime.open_order(self, job.args[0], rq_id)  # the worker's own checks
        if queues.lease_holder(self.r, order.task_id) != order.attempt_id:
            return None  # no longer ours: skipped unreported, as farm-worker skips it
        self.holding[order.attempt_id] = order.label
        try:
            self.post(Started(worker=self.name, attempt_id=order.attempt_id, elapsed=0.0))
            self.post(Progress(worker=self.name, attempt_id=order.attempt_id, progress=0.5))
            path, digest, size = images.of(order)
            outputs = [Output(frame=frame, sha256=digest, size=size,
                              etag=self.storage.put_file(order.output_key(frame), path, sha256=digest) or None)
                       for frame in order.frames]
            if queues.lease_holder(self.r, order.task_id) != order.attempt_id:
                return None  # superseded while it uploaded: the worker reports nothing
            usage = Usage(wall=round(time.monotonic() - begun, 3), site=self.credentials.site)
            self.post(Done(worker=self.name, attempt_id=order.attempt_id, outputs=tuple(outputs), usage=usage))
            return order.task_id, time.time()
        finally:
            self.holding.pop(order.attempt_id, None)


@contextmanager
def one_boto3_session():
    """Every storage client made inside shares one boto3 session: each node still has its own
    client and credentials (the farm's own `_client`), but the S3 model is loaded once per
    process (a session per client cost 160 ms and 12 MB each, for 200 nodes)."""
    import boto3.session

    shared, made = boto3.session.Session(), boto3.session.Session
    boto3.session.Session = lambda: shared
    try:
        yield
    finally:
        boto3.session.Session = made


def simulate(files: list[Path], record: Path) -> None:
    """Run the nodes of these credentials files until SIGTERM; then write the record."""
    from renderfarm.config import load_settings
    from renderfarm.enrollment import read_credentials

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    settings = load_settings()
    with one_boto3_session():
        nodes = [SimNode(read_credentials(f), settings) for f in files]
    images = Images(Path(tempfile.mkdtemp(prefix="rf-simnode-")))
    done_at: dict[int, float] = {}
    failures: list[str] = []

    def beat() -> None:
        interval = settings.heartbeat_ttl / 3
        while True:
            for node in nodes:
                node.beat()
            if stop.wait(interval):
                return

    def serve(node: SimNode) -> None:
        try:
            while not stop.is_set():
                rq_id = node.take()
                if rq_id is not None:
                    finished = node.work(rq_id, images)
                    if finished is not None:
                        done_at[finished[0]] = finished[1]
        except Exception as e:  # noqa: BLE001 - a broken simulation ends the run, said why
            failures.append(f"{node.name}: {type(e).__name__}: {e}")
            stop.set()

    for node in nodes:
        node.beat()  # every node beats before any waits for work
    threads = [threading.Thread(target=beat, daemon=True)]
    threads += [threading.Thread(target=serve, args=(node,), daemon=True) for node in nodes]
    for thread in threads:
        thread.start()
    stop.wait()
    for thread in threads:
        thread.join(TAKE_TIMEOUT + 30)
    record.write_text(json.dumps({"done_at": done_at, "failures": failures}))
    if failures:
        raise SystemExit(f"simulated nodes failed: {failures[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", type=Path, required=True, help="where to write when each done event was posted")
    parser.add_argument("credentials", type=Path, nargs="+", help="the nodes' credentials files")
    args = parser.parse_args()
    simulate(args.credentials, args.record)


if __name__ == "__main__":
    main()
