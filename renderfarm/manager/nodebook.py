"""The manager's book of enrolled nodes (from the database): each node's key, id and the newest
sequence numbers seen from it; and what enrolling, revoking and restoring a node does to the
database, Valkey (its ACL user, its event stream) and storage (its S3 identity)."""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, select, update

from renderfarm import keys, lifecycle, nodes, queues
from renderfarm.errors import NotFoundError
from renderfarm.models import Node
from renderfarm.wire import NodeGrant, Reply

if TYPE_CHECKING:
    from redis import Redis
    from sqlmodel import Session

    from renderfarm.config import Settings
    from renderfarm.manager.intake import Batch
    from renderfarm.wire import NodeAddIntent, NodeRevokeIntent

log = logging.getLogger("renderfarm.manager")
# The writes of the newest event and heartbeat numbers, after every batch: built once.
_SAVE_EVENTS = (update(Node.__table__).where(Node.__table__.c.name == bindparam("b_name"))
                .values(last_event_seq=bindparam("b_seq"), last_event_entry=bindparam("b_entry")))
_SAVE_BEATS = (update(Node.__table__).where(Node.__table__.c.name == bindparam("b_name"))
               .values(last_beat_seq=bindparam("b_beat")))


@dataclass
class NodeEntry:
    """What the manager keeps of one node between rounds."""

    name: str
    node_id: str
    key: str
    revoked: bool = False
    last_event_seq: int = 0  # the newest event accepted from the node...
    last_event_entry: str = "0-0"  # ...and the stream entry it came in
    last_beat_seq: int = 0
    pool: str = "default"  # where it was enrolled: what it says of itself does not count
    site: str = "local"
    tags: tuple[str, ...] = ()
    hold: str | None = None  # drained or disabled (`farm worker drain|disable`): it is given nothing new

    def fresh(self, entry_id: str, seq: int) -> bool:
        """Whether an event (its stream entry and sequence number) may be applied: an entry read
        again (after a restart or an error) always may; a new entry only with a newer sequence
        number than the newest accepted: a replayed event comes in a new entry with an old one."""
        from renderfarm.streams import entry_order

        if entry_order(entry_id) <= entry_order(self.last_event_entry):
            return True
        if seq <= self.last_event_seq:
            return False
        self.last_event_seq, self.last_event_entry = seq, entry_id
        return True


class NodeBook:
    """Every enrolled node, by name; what has changed since it was last written to the database."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeEntry] = {}
        self.refused: Counter[str] = Counter()  # entries refused per node, not yet counted in the database

    def load(self, session: Session) -> None:
        self.nodes = {
            n.name: NodeEntry(n.name, n.node_id, n.key, n.revoked_at is not None, n.last_event_seq,
                              n.last_event_entry, n.last_beat_seq, n.pool, n.site,
                              tuple((n.tags or "").split(",")) if n.tags else (), n.hold)
            for n in session.scalars(select(Node))
        }

    def enrolled(self) -> list[str]:
        """The names of the nodes that may act now."""
        return sorted(name for name, node in self.nodes.items() if not node.revoked)

    def get(self, name: str | None) -> NodeEntry | None:
        node = self.nodes.get(name) if name else None
        return node if node is not None and not node.revoked else None

    def streams(self) -> list[str]:
        """The control stream and every enrolled node's event stream: what the manager reads."""
        return [keys.CONTROL_STREAM, *(keys.event_stream(n) for n in self.enrolled())]

    def rq_id(self, worker: str, attempt_id: int) -> str:
        """The RQ job id of an attempt given to `worker`."""
        node = self.nodes.get(worker)
        return queues.rq_job_id(node.node_id if node else "n00000000", attempt_id)

    def save(self, session: Session, names: list[str] = (), *, beats: bool = False) -> None:
        """Write the newest events (or, with `beats`, heartbeats) accepted from these nodes and the
        refusals counted since the last save, in the caller's transaction."""
        nodes_ = [self.nodes[name] for name in names if name in self.nodes]
        if nodes_:  # one statement for them all (executemany): one each cost a busy manager a fifth of its time
            if beats:
                rows = [{"b_name": n.name, "b_beat": n.last_beat_seq} for n in nodes_]
            else:
                rows = [{"b_name": n.name, "b_seq": n.last_event_seq, "b_entry": n.last_event_entry} for n in nodes_]
            session.connection().execute(_SAVE_BEATS if beats else _SAVE_EVENTS, rows)
        refused, self.refused = self.refused, Counter()
        for name, count in refused.items():
            session.execute(update(Node).where(Node.name == name).values(refused=Node.refused + count))


def enroll(session: Session, settings: Settings, r: Redis, book: NodeBook, intent: NodeAddIntent,
           now: float) -> Reply:
    """Enroll a node, or enroll it again with new secrets (the old ones stop working at once):
    its row, its Valkey user and event stream, its S3 identity; the reply carries its secrets."""
    node = session.get(Node, intent.name)
    again = node is not None
    node_id = nodes.new_node_id()
    while session.scalar(select(Node.name).where(Node.node_id == node_id)) is not None:
        node_id = nodes.new_node_id()
    key, password = secrets.token_hex(32), nodes.new_secret()
    s3_keys = grant_storage(settings, intent.name)
    if node is None:
        node = Node(name=intent.name, node_id=node_id, key=key, redis_digest="", created_at=now)
        session.add(node)
    node.node_id, node.key, node.redis_digest = node_id, key, nodes.password_digest(password)
    node.s3_access_key, node.s3_secret_key = s3_keys or (None, None)
    node.site, node.pool, node.tags = intent.site, intent.pool, ",".join(intent.tags) or None
    node.created_at, node.revoked_at, node.last_event_seq, node.last_beat_seq = now, None, 0, 0
    node.last_event_entry = "0-0"
    session.flush()
    restore(r, node)
    if again:
        _disconnect(r, intent.name)
    book.nodes[intent.name] = NodeEntry(intent.name, node_id, key, pool=intent.pool, site=intent.site,
                                        tags=tuple(intent.tags), hold=node.hold)  # new secrets, same hold
    log.info("node %s %s (%s)", intent.name, "enrolled again: its old credentials no longer work" if again
             else "enrolled", node_id)
    grant = NodeGrant(name=intent.name, node_id=node_id, key=key, redis_user=nodes.redis_user(intent.name),
                      redis_password=password, s3_access_key=s3_keys[0] if s3_keys else None,
                      s3_secret_key=s3_keys[1] if s3_keys else None)
    return Reply(ok=True, changed=not again, node=grant)


def revoke(session: Session, settings: Settings, r: Redis, book: NodeBook, intent: NodeRevokeIntent,
           batch: Batch, now: float) -> Reply:
    """Revoke a node: its Valkey user goes (its connections closed), its S3 identity goes, its
    unfinished attempts go back to the queue to render elsewhere."""
    node = session.get(Node, intent.name)
    if node is None:
        raise NotFoundError(f"node {intent.name!r}: no such node (`farm node list` shows them)")
    if node.revoked_at is not None:
        return Reply(ok=True, changed=False)
    node.revoked_at = now
    r.execute_command("ACL", "DELUSER", nodes.redis_user(intent.name))
    _disconnect(r, intent.name)
    _save_acl(r)
    revoke_storage(settings, intent.name)
    lost = lifecycle.worker_offline(session, intent.name, now, "node revoked")
    batch.left_workers.append(intent.name)
    batch.release(lost, abandoned=True)
    if intent.name in book.nodes:
        book.nodes[intent.name].revoked = True
    log.warning("node %s revoked; %d unfinished attempt(s) go elsewhere", intent.name, len(lost))
    return Reply(ok=True, changed=True)


def restore(r: Redis, node: Node) -> None:
    """Put an enrolled node's Valkey user and event stream in place (after a restart or a wipe of
    Valkey, the database still knows them)."""
    r.execute_command("ACL", "SETUSER", nodes.redis_user(node.name),
                      *nodes.acl_rule(node.name, node.node_id, node.redis_digest))
    from renderfarm import streams

    streams.ensure_groups(r, [keys.event_stream(node.name)])
    _save_acl(r)


def restore_all(session: Session, settings: Settings, r: Redis, book: NodeBook) -> None:
    """At the manager's start: every enrolled node's user, stream and S3 identity; an S3 identity
    of a node no longer enrolled goes."""
    book.load(session)
    for node in session.scalars(select(Node).where(Node.revoked_at.is_(None))):
        restore(r, node)
        if node.s3_access_key and node.s3_secret_key:
            grant_storage(settings, node.name, (node.s3_access_key, node.s3_secret_key))
    from renderfarm.localfarm.identities import granted

    for name in set(granted(settings)) - set(book.enrolled()):
        revoke_storage(settings, name)


def restore_missing(session: Session, r: Redis) -> list[str]:
    """After Valkey came back (restarted without its ACL file, or a new one): put back the user of
    every enrolled node it lacks. Returns their names."""
    have = {u.decode() if isinstance(u, bytes) else str(u) for u in r.execute_command("ACL", "USERS")}
    missing = [node for node in session.scalars(select(Node).where(Node.revoked_at.is_(None)))
               if nodes.redis_user(node.name) not in have]
    for node in missing:
        restore(r, node)
    if missing:
        log.warning("Valkey had lost %d node user(s); put back: %s", len(missing), ", ".join(n.name for n in missing))
    return [node.name for node in missing]


def _disconnect(r: Redis, name: str) -> None:
    import redis

    try:
        r.execute_command("CLIENT", "KILL", "USER", nodes.redis_user(name))
    except redis.ResponseError:  # none connected
        pass


def _save_acl(r: Redis) -> None:
    """Keep the users across a restart where Valkey has an ACL file; elsewhere the manager puts
    them back at its start (`restore_all`)."""
    import redis

    try:
        r.execute_command("ACL", "SAVE")
    except redis.ResponseError:
        pass


def grant_storage(settings: Settings, name: str, keys_: tuple[str, str] | None = None) -> tuple[str, str] | None:
    """The node's own S3 identity, where the farm's storage is the local farm's (None elsewhere:
    there the admin gives nodes storage credentials of their own)."""
    from renderfarm.localfarm.identities import grant

    return grant(settings, name, keys=keys_)


def revoke_storage(settings: Settings, name: str) -> None:
    from renderfarm.localfarm.identities import revoke

    revoke(settings, name)


class AclWatch:
    """Valkey's record of what it refused (ACL LOG) read as dead letters of the nodes that tried:
    a node writing another's queue or heartbeat, the control stream, or running an admin command
    never reaches the manager otherwise. What was counted is kept in Valkey (keys.ACL_SEEN), so a
    restarted manager counts nothing twice."""

    KEEP = 1000  # ACL LOG entries remembered at most (Valkey keeps 128 by default)

    def __init__(self) -> None:
        self._counts: dict[str, int] | None = None  # "entry id:created" -> times counted so far

    def letters(self, r: Redis, book: NodeBook, now: float) -> list:
        import redis

        from renderfarm.wire import DeadLetter

        try:
            entries = r.acl_log(count=128)
        except redis.ResponseError:  # not allowed to read it (a managed Redis): nothing to add
            return []
        if self._counts is None:
            self._counts = {k.decode(): int(v) for k, v in r.hgetall(keys.ACL_SEEN).items()}
        out, changed = [], {}
        for e in reversed(entries):
            entry_id, count = int(e.get("entry-id", 0)), int(e.get("count", 1))
            # Entry ids start again at 0 when Valkey restarts: the creation time tells them apart.
            mark = f"{entry_id}:{e.get('timestamp-created', 0)}"
            seen = self._counts.get(mark, 0)
            name = nodes.node_of_user(str(e.get("username", "")))
            if count <= seen:
                continue
            self._counts[mark] = changed[mark] = count
            if name is None:
                continue
            what = f"{e.get('reason')} {e.get('object')}"
            out.append(DeadLetter(
                source="acl", entry=f"{entry_id}", worker=name, at=now, deliveries=count - seen,
                reason=f"refused by Valkey: {name} may not touch {what} ({e.get('context')})"[:4000]))
            book.refused[name] += count - seen
        if changed:
            pipe = r.pipeline(transaction=False)
            pipe.hset(keys.ACL_SEEN, mapping=changed)
            if len(self._counts) > self.KEEP:
                old = sorted(self._counts, key=lambda m: int(m.split(":")[0]))[: len(self._counts) - self.KEEP // 2]
                for mark in old:
                    del self._counts[mark]
                pipe.hdel(keys.ACL_SEEN, *old)
            pipe.execute()
        return out
