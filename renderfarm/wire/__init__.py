"""The wire contracts: one class per message that crosses Redis, each with one `parse(raw)` that
checks every field's type, range and length (raising a WireError that names the field and the
value) and one `to_json()`. Both ends of every hop use the same class.

    hop                                 messages
    control stream   CLI -> manager     SubmitIntent (a JobSpec), OpenJDSubmitIntent (an
                                        OpenJDSpec), CancelIntent, SuspendIntent,
                                        ResumeIntent, RetryIntent, PriorityIntent, SetIntent, TaskIntent,
                                        DeleteIntent, ArchiveIntent, NodeAddIntent,
                                        NodeRevokeIntent, WorkerHoldIntent: parse_intent()
    reply list       manager -> CLI     Reply (with a NodeGrant for an enrolled node)
    node's queue     manager -> node    TaskOrder (an OpenJD task's: OpenJDTask,
                                        its inputs: OpenJDInput), SleepOrder, Sealed with the node's key
    node's heartbeat node -> manager    Heartbeat, Sealed
    node's events    node -> manager    Started, Progress, Done, Failed, Released, Refused, Bye,
                                        Sealed: parse_event()
    dead letters     manager -> admins  DeadLetter

Importing this package imports pydantic (~0.2 s): the CLI imports it only in the commands that
send or read messages, never for `farm --help`.
"""

from renderfarm.wire.base import Limits, Message, WireError
from renderfarm.wire.deadletter import DeadLetter
from renderfarm.wire.events import (
    AttemptEvent,
    Bye,
    Done,
    Event,
    Failed,
    Output,
    Progress,
    Refused,
    Released,
    Started,
    Usage,
    parse_event,
)
from renderfarm.wire.heartbeat import Capabilities, Heartbeat
from renderfarm.wire.intents import (
    ArchiveIntent,
    CancelIntent,
    DeleteIntent,
    Intent,
    NodeAddIntent,
    NodeGrant,
    NodeRevokeIntent,
    PriorityIntent,
    Reply,
    ResumeIntent,
    RetryIntent,
    SetIntent,
    SuspendIntent,
    TaskIntent,
    VerbIntent,
    WorkerHoldIntent,
    parse_intent,
)
from renderfarm.wire.orders import Box, OpenJDInput, OpenJDTask, TaskOrder
from renderfarm.wire.sealed import Sealed
from renderfarm.wire.sleep import SleepOrder
from renderfarm.wire.submission import (
    JobSpec,
    OpenJDAsset,
    OpenJDPathMapping,
    OpenJDSpec,
    OpenJDSubmitIntent,
    RenderOptions,
    SubmitIntent,
)

__all__ = [
    "ArchiveIntent", "AttemptEvent", "Box", "Bye", "CancelIntent", "Capabilities", "DeadLetter", "DeleteIntent",
    "Done", "Event", "Failed",
    "Heartbeat", "Intent", "JobSpec", "Limits", "Message", "NodeAddIntent", "NodeGrant", "NodeRevokeIntent",
    "OpenJDAsset", "OpenJDInput", "OpenJDPathMapping", "OpenJDSpec", "OpenJDSubmitIntent", "OpenJDTask",
    "Output", "PriorityIntent", "Progress", "Refused",
    "Released", "RenderOptions", "Reply", "ResumeIntent", "RetryIntent", "Sealed", "SetIntent", "SleepOrder", "Started",
    "SubmitIntent",
    "SuspendIntent", "TaskIntent", "TaskOrder", "Usage", "VerbIntent", "WireError", "WorkerHoldIntent", "parse_event",
    "parse_intent",
]
