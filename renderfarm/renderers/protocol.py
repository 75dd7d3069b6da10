"""The line protocol between a worker and a renderer process, and warm sessions.

A renderer writes, one line each on stdout: ``progress <frame> <fraction>`` now and then and
``frame <frame> <path>`` once a frame's file is complete. Any other line is for people: the
worker shows it live (`farm log -f`) and keeps it in the attempt's log, so a renderer should say
what it is doing now and then (about once a second, not on every block); such a line must not
begin with one of the protocol's words. Run once, it renders its command line's frames and
exits 0. Run with ``--session``, it stays up and reads one JSON request per line on
stdin (the same fields as its options), answering each with the lines above and then ``done``,
or ``failed <message>`` for a request it cannot do; it exits at end of input. A worker keeps one
session per job warm, so consecutive tasks skip the interpreter's and imports' start-up.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from renderfarm.errors import InputError

DONE = "done"
FAILED = "failed"


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def serve_session(handle: Callable[[dict[str, Any]], None]) -> int:
    """Answer requests from stdin until it closes. A request that fails on its input is answered
    `failed`; any other error ends the session (its state can no longer be trusted)."""
    for raw in sys.stdin:
        if not raw.strip():
            continue
        try:
            request = json.loads(raw)
            if not isinstance(request, dict):
                raise InputError(f"request: expected a JSON object, got {raw.strip()[:80]!r}")
            handle(request)
        except (InputError, ValueError) as e:
            say(f"{FAILED} {e}")
            continue
        say(DONE)
    return 0
