"""The sealed envelope: one message between the manager and one node, with the node's name, a
sequence number and an HMAC-SHA256 under the node's key over all three. The manager seals task
orders for a node; a node seals its events and heartbeats."""

from __future__ import annotations

import hmac
from typing import Annotated

from pydantic import Field

from renderfarm.wire.base import INT64, Message, WireError

NODE = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$"


class Sealed(Message):
    """`body` is the sealed message's own JSON text, exactly as sealed."""

    what = "sealed message"
    MAX_BYTES = 4 * 1024 * 1024

    node: Annotated[str, Field(pattern=NODE)]
    seq: Annotated[int, Field(ge=1, le=INT64)]
    body: Annotated[str, Field(max_length=3 * 1024 * 1024)]
    mac: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]

    @classmethod
    def seal(cls, message: Message | str, *, node: str, seq: int, key: str) -> Sealed:
        from renderfarm.nodes import seal_mac

        body = message if isinstance(message, str) else message.to_json()
        return cls(node=node, seq=seq, body=body, mac=seal_mac(key.encode(), node, seq, body))

    def check(self, key: str) -> str:
        """The body, if the seal is this node's under `key`; WireError otherwise."""
        from renderfarm.nodes import seal_mac

        if not hmac.compare_digest(self.mac, seal_mac(key.encode(), self.node, self.seq, self.body)):
            raise WireError(f"sealed message: the seal is not {self.node}'s")
        return self.body
