"""Enrolled nodes for tests: enrolling one through a real manager (in this process, driven tick by
tick, or running), and acting as it: its sealed events and heartbeats, as a worker sends them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from renderfarm import keys, presence, streams
from renderfarm.enrollment import NodeCredentials, credentials_for, write_credentials
from renderfarm.nodes import Sequence
from renderfarm.wire import Heartbeat, Message, NodeAddIntent, Sealed


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
