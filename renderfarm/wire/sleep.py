"""The sleep order: the manager tells one idle node to run its sleep command. It travels like a
task order, sealed with the node's key on the node's own RQ queue; the node acts only on one
sealed for itself, numbered past any sleep order it obeyed before."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from renderfarm.wire.base import INT64, Message, NodeName


class SleepOrder(Message):
    """Sleep now: the node has been idle `idle` seconds (by the manager's clock)."""

    what = "sleep order"
    order: Literal["sleep"] = "sleep"  # never read as any other order
    node: NodeName
    seq: Annotated[int, Field(ge=1, le=INT64)]  # its seal's number: the manager's clock, in ms
    idle: Annotated[float, Field(ge=0, le=1e9)] = 0.0
