"""Dispatch through RQ: one queue per worker, task orders as JSON text, task leases, and the
allowlist of task functions.

The manager keeps each queue one task deep plus one prefetched. Retries and ordering belong to
the manager (pick_task), so jobs carry no RQ Retry, no dependencies and no callbacks. A task's
lease (the attempt that owns it) lives while the attempt does: it goes when the attempt ends,
and so does the attempt's RQ job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from renderfarm import keys

if TYPE_CHECKING:
    from redis import Redis

    from renderfarm.wire import TaskOrder

RENDER_TASK = "renderfarm_worker.tasks.render_task"
SLEEP_TASK = "renderfarm_worker.tasks.sleep_node"  # a sleep order (renderfarm.manager.sleeper)
# The only functions a worker will import for a queued job (RQ imports by dotted name).
ALLOWED_FUNCTIONS = frozenset({RENDER_TASK, SLEEP_TASK})
SLEEP_ORDER_TTL = 60  # seconds a sleep order may wait in a queue before RQ drops it
FAILURE_TTL = 24 * 3600  # RQ keeps failed jobs (with their arguments) a year by default
TIMEOUT_MARGIN = 120  # our own timeout kills the renderer first; RQ's is the backstop


def rq_job_id(node_id: str, attempt_id: int) -> str:
    """The RQ job of an attempt given to the node `node_id` (RQ allows letters, digits, '_' and
    '-' only): the node's Valkey user may touch its own jobs' keys alone."""
    return f"{node_id}-{attempt_id}"


def load_rq() -> None:
    """Import RQ now, in a process about to dispatch (the manager, once it leads). Imported at
    the first dispatch instead, it held up the first job after a start; the command line, which
    never dispatches, never pays for it."""
    import rq.job  # noqa: F401
    import rq.queue  # noqa: F401
    import rq.serializers  # noqa: F401


def _queue(r: Redis, worker: str):
    from rq import Queue
    from rq.serializers import JSONSerializer

    return Queue(keys.queue_name(worker), connection=r, serializer=JSONSerializer)


def enqueue_attempts(r: Redis, orders: list[tuple[TaskOrder, str, str, float]]) -> None:
    """Put task orders (order, its sealed text, its RQ id, timeout) on their nodes' queues, each
    recorded as its task's lease holder, in one transaction: one round trip for a whole dispatch."""
    if not orders:
        return
    # RQ starts MULTI on the pipeline itself, so each lease goes in after its job: a worker
    # cannot see one without the other.
    pipe = r.pipeline(transaction=True)
    for order, sealed, rq_id, timeout in orders:
        _queue(r, order.node).enqueue_call(
            RENDER_TASK,
            args=(sealed,),
            timeout=int(timeout) + TIMEOUT_MARGIN,
            result_ttl=0,
            failure_ttl=FAILURE_TTL,
            job_id=rq_id,
            description=f"render {order.label}",
            pipeline=pipe,
        )
        pipe.set(keys.lease_key(order.task_id), order.attempt_id)
    pipe.execute()


def enqueue_sleep(r: Redis, worker: str, sealed: str, rq_id: str) -> None:
    """Put a sealed sleep order on a node's queue; it goes unread after SLEEP_ORDER_TTL seconds."""
    _queue(r, worker).enqueue_call(SLEEP_TASK, args=(sealed,), timeout=300, ttl=SLEEP_ORDER_TTL, result_ttl=0,
                                   failure_ttl=3600, job_id=rq_id, description="sleep")


def withdraw_queue(r: Redis, worker: str) -> None:
    """Empty a worker's queue (it left or died); the manager re-plans what was in it."""
    _queue(r, worker).empty()


_RELEASE_LEASE = """
for i, key in ipairs(KEYS) do
  if redis.call('get', key) == ARGV[i] then redis.call('del', key) end
end
return 0
"""


def release_leases(r: Redis, held: list[tuple[int, int]], abandoned: list[str] = ()) -> None:
    """Drop the leases of (task, attempt) pairs whose attempts ended, each only if that attempt
    still holds it (a stale event must not free a task that a newer attempt owns), and the RQ
    jobs (by id) of `abandoned` attempts (RQ would keep them a day, with their orders)."""
    pipe = r.pipeline(transaction=False)
    for start in range(0, len(held), 500):
        part = held[start : start + 500]
        pipe.eval(_RELEASE_LEASE, len(part), *[keys.lease_key(t) for t, _ in part], *[str(a) for _, a in part])
    for start in range(0, len(abandoned), 500):
        pipe.delete(*[rq_job_key(a) for a in abandoned[start : start + 500]])
    pipe.execute()


def rq_job_key(rq_id: str) -> str:
    from rq.job import Job

    return Job.key_for(rq_id)


REVOKED = 0  # a lease value no attempt has: its render stops at its next lease check
_REVOKE_LEASE = """
for i, key in ipairs(KEYS) do
  if redis.call('get', key) == ARGV[i] then redis.call('set', key, '0', 'EX', ARGV[#KEYS + 1]) end
end
return 0
"""
REVOKED_TTL = 3600  # a revoked lease stays long enough for any worker to see it, then goes


def revoke_leases(r: Redis, held: list[tuple[int, int]]) -> None:
    """Take tasks away from their running attempts (cancel, suspend --kill): each worker sees at
    its next lease check (within a second or so) that it no longer holds its task, and stops."""
    for start in range(0, len(held), 500):
        part = held[start : start + 500]
        r.eval(_REVOKE_LEASE, len(part), *[keys.lease_key(t) for t, _ in part], *[str(a) for _, a in part],
               REVOKED_TTL)


def mark_taken_back(r: Redis, task_ids: list[int], *, ttl: float) -> None:
    """Tell whichever worker still renders these tasks to stop, where no attempt holds their
    lease any more (a held lease already tells a stale worker it lost). The mark goes after `ttl`."""
    if not task_ids:
        return
    pipe = r.pipeline(transaction=False)
    for task_id in task_ids:
        pipe.set(keys.lease_key(task_id), REVOKED, nx=True, px=int(ttl * 1000))
    pipe.execute()


def withdraw_attempt(r: Redis, worker: str, rq_id: str) -> bool:
    """Take a queued attempt (its RQ id) back from its worker's queue; False if the worker already
    took it."""
    removed = _queue(r, worker).remove(rq_id)
    if removed:
        r.delete(rq_job_key(rq_id))
    return bool(removed)


def queued_in(r: Redis, pairs: list[tuple[str, str]]) -> list[bool]:
    """Whether each (worker, RQ id) is still waiting in that worker's queue."""
    pipe = r.pipeline(transaction=False)
    for worker, rq_id in pairs:
        pipe.lpos(_queue(r, worker).key, rq_id)
    return [pos is not None for pos in pipe.execute()]


def restore_lease(r: Redis, task_id: int, attempt_id: int) -> None:
    r.set(keys.lease_key(task_id), attempt_id)


def lease_holder(r: Redis, task_id: int) -> int | None:
    """The attempt id that owns a task now, or None (0 when the farm took it back)."""
    value = r.get(keys.lease_key(task_id))
    try:
        return int(value) if value is not None else None
    except ValueError:  # not ours: nobody holds it
        return None


def queue_depths(r: Redis, workers: list[str]) -> dict[str, int]:
    pipe = r.pipeline(transaction=False)
    for w in workers:
        pipe.llen(f"rq:queue:{keys.queue_name(w)}")
    return dict(zip(workers, pipe.execute()))
