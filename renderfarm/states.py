"""The states of jobs, tasks, attempts and workers, and the kinds of task (no database imports:
the CLI's fast read path uses them too). Only renderfarm.lifecycle changes a state."""

from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUSPENDED = "suspended"  # no new task starts until it is resumed
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TaskState(str, Enum):
    WAITING = "waiting"  # an assembly whose frame's tiles are not all committed yet
    PENDING = "pending"  # waiting for the manager to hand it to a worker
    QUEUED = "queued"  # in a worker's queue, not started yet
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # `farm task skip`: final without rendering; its frames are not there


class AttemptState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"  # verified and promoted
    FAILED = "failed"
    CANCELLED = "cancelled"  # superseded, or withdrawn from a worker that left
    LOST = "lost"  # its worker vanished


class TaskKind(str, Enum):
    RENDER = "render"  # a chunk of whole frames
    TILE = "tile"  # one tile of one frame
    ASSEMBLE = "assemble"  # stitching one frame's committed tiles
    OPENJD = "openjd"  # one task of an OpenJD step: its parameter values, run in an OpenJD session


class WorkerState(str, Enum):
    IDLE = "idle"
    BUSY = "busy"
    STOPPING = "stopping"
    OFFLINE = "offline"
    ASLEEP = "asleep"  # told to sleep by the manager (FARM_SLEEP_AFTER); woken when work for it comes
    WAKING = "waking"  # asleep, and woken by the manager for work: not back yet (FARM_WAKE_TIMEOUT)


class DeliveryState(str, Enum):
    """Where one notification stands with one webhook URL."""

    PENDING = "pending"  # to be sent (again, from its next try on)
    SENT = "sent"  # the URL answered 2xx: never sent again
    FAILED = "failed"  # every try failed: given up
    SKIPPED = "skipped"  # no URL to send it to (no FARM_WEBHOOK_URL when it was due)


# A node's hold (`farm worker drain|disable NAME`): it is given no new work. A drain ends when
# the worker leaves the farm; a disable lasts until `farm worker enable`.
HOLD_DRAIN, HOLD_DISABLE = "drain", "disable"
HELD = {HOLD_DRAIN: "drained", HOLD_DISABLE: "disabled"}


def held_state(hold: str | None, *, busy: bool) -> str:
    """What a worker is, as its admin set it: `draining` while a drained worker still renders,
    `drained` once it does not, `disabled`; `enabled` when not held."""
    if hold == HOLD_DRAIN and busy:
        return "draining"
    return HELD.get(hold, "enabled")


JOB_FINAL = {JobState.DONE, JobState.FAILED, JobState.CANCELLED}
TASK_FINAL = {TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED, TaskState.SKIPPED}
ATTEMPT_ACTIVE = {AttemptState.QUEUED, AttemptState.RUNNING}
# A worker the manager told to sleep and has not seen awake since: asleep, or being woken.
WORKER_SLEEPING = (WorkerState.ASLEEP.value, WorkerState.WAKING.value)


