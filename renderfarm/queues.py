"""Dispatch through RQ: one queue per worker, JSON payloads, and the allowlist of task functions.

The manager keeps each queue one task deep plus one prefetched. Retries and ordering belong to
the manager (pick_task), so jobs carry no RQ Retry, no dependencies and no callbacks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from renderfarm import keys

if TYPE_CHECKING:
    from redis import Redis

RENDER_TASK = "renderfarm_worker.tasks.render_task"
# The only functions a worker will import for a queued job (RQ imports by dotted name).
ALLOWED_FUNCTIONS = frozenset({RENDER_TASK})
FAILURE_TTL = 24 * 3600  # RQ keeps failed jobs (with their arguments) a year by default
TIMEOUT_MARGIN = 120  # our own timeout kills the renderer first; RQ's is the backstop


def rq_job_id(job_id: str, task_index: int, attempt: int) -> str:
    return f"{job_id}-{task_index}-{attempt}"  # RQ allows letters, digits, '_' and '-' only


def enqueue_attempt(r: Redis, worker: str, payload: dict[str, Any], *, timeout: float) -> None:
    """Put one attempt on a worker's queue and record it as the task's lease holder."""
    enqueue_attempts(r, [(worker, payload, timeout)])


def enqueue_attempts(r: Redis, attempts: list[tuple[str, dict[str, Any], float]]) -> None:
    """Put attempts (worker, payload, timeout) on their workers' queues, each recorded as its
    task's lease holder, in one transaction: one round trip for a whole dispatch."""
    from rq import Queue
    from rq.serializers import JSONSerializer

    if not attempts:
        return
    # RQ starts MULTI on the pipeline itself, so each lease goes in after its job: a worker
    # cannot see one without the other.
    pipe = r.pipeline(transaction=True)
    for worker, payload, timeout in attempts:
        queue = Queue(keys.queue_name(worker), connection=r, serializer=JSONSerializer)
        queue.enqueue_call(
            RENDER_TASK,
            args=(payload,),
            timeout=int(timeout) + TIMEOUT_MARGIN,
            result_ttl=0,
            failure_ttl=FAILURE_TTL,
            job_id=rq_job_id(payload["job_id"], payload["task_index"], payload["attempt"]),
            description=f"render {payload['job_id']} task {payload['task_index']} attempt {payload['attempt']}",
            pipeline=pipe,
        )
        pipe.set(keys.lease_key(payload["task_id"]), payload["attempt_id"])
    pipe.execute()


def withdraw_queue(r: Redis, worker: str) -> None:
    """Empty a worker's queue (it left or died); the manager re-plans what was in it."""
    from rq import Queue
    from rq.serializers import JSONSerializer

    Queue(keys.queue_name(worker), connection=r, serializer=JSONSerializer).empty()


_RELEASE_LEASE = """
for i, key in ipairs(KEYS) do
  if redis.call('get', key) == ARGV[i] then redis.call('del', key) end
end
return 0
"""


def release_leases(r: Redis, held: list[tuple[int, int]]) -> None:
    """Drop the leases of (task, attempt) pairs, each only if that attempt still holds it: a
    stale event must not free a task that a newer attempt owns."""
    for start in range(0, len(held), 500):
        part = held[start : start + 500]
        r.eval(_RELEASE_LEASE, len(part), *[keys.lease_key(t) for t, _ in part], *[str(a) for _, a in part])


REVOKED = 0  # a lease value no attempt has: its render stops at its next lease check
_REVOKE_LEASE = """
for i, key in ipairs(KEYS) do
  if redis.call('get', key) == ARGV[i] then redis.call('set', key, '0') end
end
return 0
"""


def revoke_leases(r: Redis, held: list[tuple[int, int]]) -> None:
    """Take tasks away from their running attempts (cancel, suspend --kill): each worker sees at
    its next lease check (within a second or so) that it no longer holds its task, and stops."""
    for start in range(0, len(held), 500):
        part = held[start : start + 500]
        r.eval(_REVOKE_LEASE, len(part), *[keys.lease_key(t) for t, _ in part], *[str(a) for _, a in part])


def withdraw_attempt(r: Redis, worker: str, rq_id: str) -> bool:
    """Take a queued attempt back from its worker's queue; False if the worker already took it."""
    removed = r.lrem(f"rq:queue:{keys.queue_name(worker)}", 1, rq_id)
    if removed:
        r.delete(f"rq:job:{rq_id}")
    return bool(removed)


WON_LEASE_TTL = 24 * 3600


def age_out_leases(r: Redis, won: list[tuple[int, int]]) -> None:
    """Winners' leases stay a day, so a stale attempt learns it lost, then they go."""
    if won:
        pipe = r.pipeline(transaction=False)
        for task_id, _attempt_id in won:
            pipe.expire(keys.lease_key(task_id), WON_LEASE_TTL)
        pipe.execute()


def restore_lease(r: Redis, task_id: int, attempt_id: int) -> None:
    r.set(keys.lease_key(task_id), attempt_id)


def lease_holder(r: Redis, task_id: int) -> int | None:
    """The attempt id that owns a task now, or None."""
    value = r.get(keys.lease_key(task_id))
    return int(value) if value is not None else None


def queue_depths(r: Redis, workers: list[str]) -> dict[str, int]:
    pipe = r.pipeline(transaction=False)
    for w in workers:
        pipe.llen(f"rq:queue:{keys.queue_name(w)}")
    return dict(zip(workers, pipe.execute()))
