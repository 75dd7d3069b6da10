"""A dead letter: an entry the manager could not parse or apply, kept with its reason.

Written by the manager alone, to the dead-letter stream; read by `farm dead-letters`, `farm
doctor` and `farm top`."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from renderfarm.wire.base import Message, Text, WorkerName

RAW_KEPT = 4096  # characters of the entry kept with it
REASON_KEPT = 4000  # characters of the reason kept (a Text)


class DeadLetter(Message):
    """Where an entry came from, why it was put aside, and (the start of) what it held."""

    what = "dead letter"
    source: Annotated[str, Field(max_length=200)]  # a stream, a worker's queue, a heartbeat key
    entry: Annotated[str, Field(max_length=200)]  # the entry id, RQ job id or worker name
    reason: Text
    raw: Annotated[str, Field(max_length=RAW_KEPT + 16)] = ""
    worker: WorkerName | None = None  # the worker that sent it, when it says (unverified)
    at: Annotated[float, Field(ge=0)]  # the manager's time
    deliveries: Annotated[int, Field(ge=0)] = 1

    @field_validator("reason", mode="before")
    @classmethod
    def _cut_reason(cls, reason):
        """A reason is kept to its start: one that quotes a long field name or a worker's long
        refusal must not stop the entry from being kept."""
        return reason[:REASON_KEPT] if isinstance(reason, str) else reason

    @staticmethod
    def excerpt(raw: bytes | str | None) -> str:
        """The start of an entry, as text, for a dead letter."""
        if raw is None:
            return ""
        text = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else str(raw)
        return text if len(text) <= RAW_KEPT else text[:RAW_KEPT] + "..."
