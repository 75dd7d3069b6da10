"""The control stream's intents (the CLI asks, the manager applies) and the manager's replies.

Every intent carries the request id the CLI made; the manager answers on that id's reply list.
A verb names one job by its full id (the CLI resolves a prefix first)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from renderfarm.wire.base import (
    MAX_WORKERS_CAP,
    JobId,
    Message,
    NodeName,
    RequestId,
    ShortSlug,
    Tag,
    Text,
    WireError,
    union_parser,
)
from renderfarm.wire.submission import MAX_TIMEOUT, OpenJDSubmitIntent, SubmitIntent


class CancelIntent(Message):
    """`farm cancel JOB`: every unfinished task is cancelled, running ones stopped."""

    what = "intent cancel"
    type: Literal["cancel"] = "cancel"
    request_id: RequestId
    job: JobId


class SuspendIntent(Message):
    """`farm suspend JOB [--kill]`: no new task starts; with `kill`, running ones stop too."""

    what = "intent suspend"
    type: Literal["suspend"] = "suspend"
    request_id: RequestId
    job: JobId
    kill: bool = False


class ResumeIntent(Message):
    """`farm resume JOB`: a suspended job's tasks may start again."""

    what = "intent resume"
    type: Literal["resume"] = "resume"
    request_id: RequestId
    job: JobId


class RetryIntent(Message):
    """`farm retry JOB [--all]`: render the failed tasks again (with `all`, every task)."""

    what = "intent retry"
    type: Literal["retry"] = "retry"
    request_id: RequestId
    job: JobId
    all: bool = False


class PriorityIntent(Message):
    """`farm priority JOB N`: the job's new priority, 0-100 (higher first)."""

    what = "intent priority"
    type: Literal["priority"] = "priority"
    request_id: RequestId
    job: JobId
    priority: Annotated[int, Field(ge=0, le=100)]


class SetIntent(Message):
    """`farm set JOB [--timeout S] [--max-workers N] [--pool P] [--require TAG ...] [--retries N]`:
    a job's settings changed; running attempts keep those they started with, new ones get these
    (its prefetched attempts are handed out again). `max_workers` 0 lifts the cap; `requires` ()
    lets any worker render it; `retries` is how many times a failed task is tried again."""

    what = "intent set"
    type: Literal["set"] = "set"
    request_id: RequestId
    job: JobId
    timeout: Annotated[float, Field(ge=1, le=MAX_TIMEOUT)] | None = None
    max_workers: Annotated[int, Field(ge=0, le=MAX_WORKERS_CAP)] | None = None
    pool: ShortSlug | None = None
    requires: Annotated[tuple[Tag, ...], Field(max_length=32)] | None = None
    retries: Annotated[int, Field(ge=0, le=100)] | None = None

    @model_validator(mode="after")
    def _something(self) -> SetIntent:
        if all(getattr(self, f) is None for f in SETTABLE):
            raise WireError("intent set: nothing to change (give --timeout, --max-workers, --pool, --require or --retries)")
        return self


SETTABLE = ("timeout", "max_workers", "pool", "requires", "retries")


class TaskIntent(Message):
    """`farm task kill|retry|skip JOB:TASK...`: `kill` stops a task's running attempt (a failure:
    retried per the job's retries), `retry` renders final tasks again, `skip` makes tasks final
    without rendering (skipped, never faked). The tasks are named by index, or by `frames` (every
    task whose frames all lie in the range)."""

    what = "intent task"
    type: Literal["task"] = "task"
    request_id: RequestId
    job: JobId
    action: Literal["kill", "retry", "skip"]
    tasks: Annotated[tuple[Annotated[int, Field(ge=0, le=2**31)], ...], Field(max_length=10_000)] = ()
    frames: Annotated[str, Field(min_length=1, max_length=4096)] | None = None

    @model_validator(mode="after")
    def _named(self) -> TaskIntent:
        if bool(self.tasks) == (self.frames is not None):
            raise WireError("intent task: name tasks (JOB:TASK) or frames (JOB:frames=A-B), one of them")
        return self


class DeleteIntent(Message):
    """`farm delete JOB [--cancel] [--keep-frames]`: a finished job's rows go, and every object of
    it in storage (with `keep_frames`, its final frames stay); `cancel` cancels it first if it is
    not finished (without, an unfinished job is refused)."""

    what = "intent delete"
    type: Literal["delete"] = "delete"
    request_id: RequestId
    job: JobId
    cancel: bool = False
    keep_frames: bool = False


class ArchiveIntent(Message):
    """`farm archive JOB`: a finished job is hidden from default listings (`farm jobs --all`
    shows it) and its attempts' data is deleted; its frames and logs stay."""

    what = "intent archive"
    type: Literal["archive"] = "archive"
    request_id: RequestId
    job: JobId


class NodeAddIntent(Message):
    """`farm node add NAME`: enroll a render node (again: its old credentials stop working)."""

    what = "intent node-add"
    type: Literal["node-add"] = "node-add"
    request_id: RequestId
    name: NodeName
    site: ShortSlug = "local"
    pool: ShortSlug = "default"
    tags: Annotated[tuple[Tag, ...], Field(max_length=32)] = ()


class NodeRevokeIntent(Message):
    """`farm node revoke NAME`: the node's credentials stop working, its attempts go elsewhere."""

    what = "intent node-revoke"
    type: Literal["node-revoke"] = "node-revoke"
    request_id: RequestId
    name: NodeName


class WorkerHoldIntent(Message):
    """`farm worker drain|disable|enable NAME`: the node finishes what it renders and takes
    nothing new (its prefetched tasks go elsewhere); `drain` ends when the worker leaves the farm,
    `disable` lasts across its restarts; `enable` ends either."""

    what = "intent worker"
    type: Literal["worker"] = "worker"
    request_id: RequestId
    name: NodeName
    hold: Literal["drain", "disable", "enable"]


Intent = (SubmitIntent | OpenJDSubmitIntent | CancelIntent | SuspendIntent | ResumeIntent | RetryIntent | PriorityIntent | SetIntent
          | TaskIntent | DeleteIntent | ArchiveIntent | NodeAddIntent | NodeRevokeIntent | WorkerHoldIntent)
VerbIntent = CancelIntent | SuspendIntent | ResumeIntent | RetryIntent | PriorityIntent | SetIntent
INTENT_MAX_BYTES = SubmitIntent.MAX_BYTES

parse_intent = union_parser(
    "intent", (SubmitIntent, OpenJDSubmitIntent, CancelIntent, SuspendIntent, ResumeIntent, RetryIntent, PriorityIntent, SetIntent,
               TaskIntent, DeleteIntent, ArchiveIntent, NodeAddIntent, NodeRevokeIntent, WorkerHoldIntent),
    INTENT_MAX_BYTES,
)


class NodeGrant(Message):
    """What the manager issued a node it enrolled: the secrets of its credentials file."""

    what = "node grant"
    name: NodeName
    node_id: Annotated[str, Field(pattern=r"^n[0-9a-f]{8}$")]
    key: Annotated[str, Field(min_length=32, max_length=128)]
    redis_user: Annotated[str, Field(max_length=64)]
    redis_password: Annotated[str, Field(min_length=16, max_length=128)]
    s3_access_key: Annotated[str, Field(max_length=128)] | None = None
    s3_secret_key: Annotated[str, Field(max_length=128)] | None = None
"""Any entry of the control stream, checked: `parse_intent(raw) -> Intent`."""


class Reply(Message):
    """The manager's answer to one intent: `ok`, or the error in one line. `changed` is False when
    the verb had nothing to do (the job was already in the state asked for)."""

    what = "reply"
    ok: bool
    error: Text | None = None
    job_id: JobId | None = None
    state: Annotated[str, Field(max_length=16)] | None = None  # a job's, or a held worker's
    priority: Annotated[int, Field(ge=0, le=100)] | None = None
    changed: bool | None = None
    node: NodeGrant | None = None
    tasks: Annotated[tuple[int, ...], Field(max_length=10_000)] | None = None  # those a task verb changed
