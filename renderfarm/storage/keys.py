"""Where things live in storage: scenes by content, attempts under their node by job/task/attempt,
frames and tiles under their job by name."""

from __future__ import annotations

from renderfarm.frames import frame_name


def scene_key(sha256: str, suffix: str) -> str:
    """Scenes are content-addressed so each distinct scene is uploaded once."""
    return f"scenes/{sha256}{suffix}"


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"


def node_prefix(node: str) -> str:
    """Everything one render node writes, and the only place it may write (its S3 identity)."""
    return f"nodes/{node}/"


def attempt_prefix(node: str, job_id: str, task_index: int, attempt: int) -> str:
    """Everything one attempt writes, under its node's own prefix, fenced from every other
    attempt; the manager promotes what it verifies from here to the job's own keys."""
    return f"{node_prefix(node)}jobs/{job_id}/{task_index}/{attempt}/"


def frames_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/frames/"


def frame_key(job_id: str, name: str, frame: int, ext: str) -> str:
    """The final, promoted key of one frame."""
    return frames_prefix(job_id) + frame_name(name, frame, ext)


def tiles_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/tiles/"


def tile_key(job_id: str, name: str, frame: int, tile: int, ext: str) -> str:
    """A committed tile, waiting for its frame's assembly: jobs/<job>/tiles/<name>.<frame>/<tile>.<ext>."""
    return f"{tiles_prefix(job_id)}{frame_name(name, frame, ext).rsplit('.', 1)[0]}/{tile}.{ext}"
