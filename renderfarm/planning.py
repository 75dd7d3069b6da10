"""The planner: a checked submission becomes a job and its tasks (pure, no I/O)."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from renderfarm.errors import InputError
from renderfarm.frames import chunk_frames, count_frames, format_frames, parse_frames

PRIORITY_MIN, PRIORITY_MAX, PRIORITY_DEFAULT = 0, 100, 50
JOB_ID_LENGTH = 8
_SLUG = re.compile(r"[^A-Za-z0-9._-]+")
_INTEGER = re.compile(r"[+-]?[0-9]{1,12}")


@dataclass(frozen=True)
class TaskPlan:
    """One task of a job: its index in the job, the frames it renders in order, and for tiled
    jobs which tile it renders (or that it assembles the frame)."""

    index: int
    frames: tuple[int, ...]
    kind: str = "render"
    tile: int | None = None
    weight: float | None = None  # its share of the job's frames; None: its frame count
    rank: int = 1  # 0: renders before the rest of the job (the first, middle and last frames)
    step: str | None = None  # an OpenJD task's step...
    parameters: str | None = None  # ...and its task parameter values (JSON)

    @property
    def spec(self) -> str:
        return format_frames(list(self.frames))

    @property
    def share(self) -> float:
        return float(len(self.frames)) if self.weight is None else self.weight


def new_job_id() -> str:
    """A short random job id: 8 hex digits (4 billion values; collisions are checked on insert)."""
    return secrets.token_hex(JOB_ID_LENGTH // 2)


def _whole_number(value: object) -> int | None:
    """Plain ASCII digits with an optional sign, nothing that int() alone would also take ('1_0', '٣')."""
    text = str(value).strip()
    return int(text) if _INTEGER.fullmatch(text) else None


def check_priority(value: object) -> int:
    priority = _whole_number(value)
    if priority is None:
        raise InputError(f"priority: {value!r} is not a whole number from {PRIORITY_MIN} to {PRIORITY_MAX}")
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise InputError(f"priority: {priority} is outside {PRIORITY_MIN}-{PRIORITY_MAX}")
    return priority


def check_chunk(value: object) -> int:
    chunk = _whole_number(value)
    if chunk is None:
        raise InputError(f"chunk: {value!r} is not a whole number")
    if chunk < 1:
        raise InputError(f"chunk: {chunk} must be at least 1")
    return chunk


MAX_TIMEOUT = 7 * 86400


def check_timeout(value: object) -> float | None:
    """A task timeout in seconds (None: the farm's default)."""
    if value is None:
        return None
    try:
        seconds = float(str(value).strip())
    except ValueError:
        seconds = float("nan")
    if not 1 <= seconds <= MAX_TIMEOUT:  # also refuses nan and inf
        raise InputError(f"timeout: {value!r} is not a number of seconds from 1 to {MAX_TIMEOUT}")
    return seconds


def slug(text: str, field: str = "name") -> str:
    """A name safe for storage keys and file names: letters, digits, '.', '_' and '-'."""
    cleaned = _SLUG.sub("-", text).strip("-.")[:100].rstrip("-.")
    if not cleaned:
        raise InputError(f"{field}: {text!r} has no usable characters (use letters, digits, '.', '_' or '-')")
    return cleaned


def check_task_count(frames_spec: str, chunk: int, max_tasks: int, tiles: int = 0) -> int:
    """Count the tasks a spec makes (with `tiles` per frame, plus one assembly each), before
    anything is expanded; returns the frame count."""
    chunk = check_chunk(chunk)
    frame_count = count_frames(frames_spec)
    if tiles:
        if chunk != 1:
            raise InputError(f"chunk: {chunk} with tiles; a tiled frame is one task per tile (drop --chunk)")
        tasks = frame_count * (tiles + 1)
        how = f"with {tiles} tiles per frame plus its assembly"
    else:
        tasks = -(-frame_count // chunk)
        how = f"with chunk {chunk}"
    if tasks > max_tasks:
        hint = "fewer tiles or frames" if tiles else "raise --chunk"
        raise InputError(f"frames: {frames_spec!r} makes {tasks:,} tasks {how}, over the limit of {max_tasks:,} ({hint})")
    return frame_count


def plan_tasks(frames_spec: str, chunk: int, max_tasks: int, tiles: int = 0, first_last: bool = False) -> list[TaskPlan]:
    """Split a job's frames into tasks of at most `chunk` frames, in frame-spec order; or, with
    `tiles` per frame, each frame's tile tasks followed by its assembly task (so a frame's
    assembly sorts before the next frame's tiles). With `first_last`, the tasks holding the
    first, middle and last frames rank before the rest, so artists see problems early."""
    check_task_count(frames_spec, chunk, max_tasks, tiles)
    frames = parse_frames(frames_spec)
    early = {frames[0], frames[len(frames) // 2], frames[-1]} if first_last else set()

    def rank(task_frames) -> int:
        return 0 if early.intersection(task_frames) else 1

    if not tiles:
        return [TaskPlan(i, tuple(c), rank=rank(c)) for i, c in enumerate(chunk_frames(frames, chunk))]
    share = 1.0 / (tiles + 1)
    plans: list[TaskPlan] = []
    for frame in frames:
        r = rank((frame,))
        plans += [TaskPlan(len(plans) + t, (frame,), "tile", t, share, r) for t in range(tiles)]
        plans.append(TaskPlan(len(plans), (frame,), "assemble", None, share, r))
    return plans
