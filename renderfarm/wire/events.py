"""Worker events: what a worker tells the manager about one attempt (or itself), on the event
stream. Workers report durations, never times: the manager stamps every event with its own clock."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from renderfarm.wire.base import (
    TASK_FRAMES_CAP,
    Frame,
    Id,
    Message,
    RelativePath,
    Sha256,
    ShortSlug,
    StorageKey,
    Text,
    WorkerName,
    union_parser,
)
from renderfarm.wire.deadletter import RAW_KEPT

STATUS_MAX = 200  # characters of an openjd_status text kept
# A status text shown beside a task's progress: one line of printable text, bounded.
StatusText = Annotated[str, Field(max_length=STATUS_MAX, pattern=r"^[^\x00-\x1f\x7f]*$")]
Seconds = Annotated[float, Field(ge=0, le=1e7)]  # 115 days: no attempt runs longer
Watts = Annotated[float, Field(gt=0, le=1e6)]


class Usage(Message):
    """What an attempt burned on the worker: for the manager's energy, cost and CO2 accounting."""

    what = "usage"
    wall: Seconds  # the attempt's time on the worker, from taking it to reporting it
    cpu: Annotated[float, Field(ge=0, le=1e9)] = 0.0  # CPU seconds of its renderer and the worker
    site: ShortSlug = "local"
    watts: Watts | None = None  # the node's draw while rendering (None: the site's default)
    watts_per_core: Watts | None = None  # or a draw per busy core, over the CPU time


class Output(Message):
    """One file an attempt wrote: a frame, at its attempt's key for the frame (the manager derives
    it), or an OpenJD task's file, at `<attempt prefix>outputs/<path>`; exactly one of the two."""

    what = "output"
    frame: Frame | None = None
    path: RelativePath | None = None  # relative to the session's params/ folder
    sha256: Sha256
    size: Annotated[int, Field(ge=1, le=2**40)]
    etag: Annotated[str, Field(pattern=r'^[\x21-\x7e]{1,128}$')] | None = None  # storage's version tag

    @model_validator(mode="after")
    def _one_of(self) -> Output:
        if (self.frame is None) == (self.path is None):
            raise ValueError("output: names a frame or a path, exactly one of the two")
        return self


class Started(Message):
    """The attempt began rendering `elapsed` seconds ago."""

    what = "event started"
    type: Literal["started"] = "started"
    worker: WorkerName
    attempt_id: Id
    elapsed: Seconds = 0.0


class Progress(Message):
    """The attempt is this far through its frames."""

    what = "event progress"
    type: Literal["progress"] = "progress"
    worker: WorkerName
    attempt_id: Id
    progress: Annotated[float, Field(ge=0, le=1)]
    status: StatusText | None = None  # an OpenJD action's latest openjd_status line


class Done(Message):
    """The attempt wrote every frame: the manager verifies and promotes them."""

    what = "event done"
    type: Literal["done"] = "done"
    worker: WorkerName
    attempt_id: Id
    # An OpenJD task may write nothing the manager checks (its outputs are files under PATH
    # parameters); a render task without its frames fails verification (expected_outputs).
    outputs: Annotated[tuple[Output, ...], Field(max_length=TASK_FRAMES_CAP)]
    log_key: StorageKey | None = None
    usage: Usage


class Failed(Message):
    """The attempt failed: the manager retries the task or fails it."""

    what = "event failed"
    type: Literal["failed"] = "failed"
    worker: WorkerName
    attempt_id: Id
    error: Text
    log_key: StorageKey | None = None
    usage: Usage | None = None
    bad_tiles: Annotated[tuple[Annotated[int, Field(ge=0, lt=4096)], ...], Field(max_length=4096)] = ()


class Released(Message):
    """The attempt was handed back unfinished (the worker is stopping, or Redis was away): not a
    failure of the task."""

    what = "event released"
    type: Literal["released"] = "released"
    worker: WorkerName
    attempt_id: Id
    reason: Annotated[str, Field(max_length=1000)]
    log_key: StorageKey | None = None
    usage: Usage | None = None


class Refused(Message):
    """The worker refused an entry of its queue (not our function, not JSON, not a valid order):
    the manager keeps it as a dead letter."""

    what = "event refused"
    type: Literal["refused"] = "refused"
    worker: WorkerName
    rq_id: Annotated[str, Field(max_length=200)]
    reason: Text
    raw: Annotated[str, Field(max_length=RAW_KEPT + 16)] = ""  # DeadLetter.excerpt of the entry


class Bye(Message):
    """The worker is leaving: its unfinished attempts go back to the queue at once."""

    what = "event bye"
    type: Literal["bye"] = "bye"
    worker: WorkerName


Event = Started | Progress | Done | Failed | Released | Refused | Bye
AttemptEvent = Started | Progress | Done | Failed | Released
EVENT_MAX_BYTES = 2 * 1024 * 1024  # a done event of 10,000 frames

parse_event = union_parser("event", (Started, Progress, Done, Failed, Released, Refused, Bye), EVENT_MAX_BYTES)
"""Any entry of the event stream, checked: `parse_event(raw) -> Event`."""
