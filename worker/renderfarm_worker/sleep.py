"""A node going to sleep on the manager's order, and noticing that it woke: the sealed order is
opened (for this node, under its key, numbered past the last one obeyed), the node says `asleep`
in its heartbeat, then runs its sleep command (FARM_SLEEP_COMMAND, `systemctl suspend` by
default). It says `asleep` until it takes a task again, or sees its boot clock run ahead of its
monotonic one (the machine was suspended and resumed)."""

from __future__ import annotations

import logging
import subprocess
import time
from typing import TYPE_CHECKING

from renderfarm.errors import ConfigError
from renderfarm.wire import SleepOrder, WireError

if TYPE_CHECKING:
    from renderfarm_worker.runtime import WorkerRuntime

log = logging.getLogger("renderfarm.worker")

SLEEP_COMMAND_TIMEOUT = 120.0  # seconds the sleep command may run (it returns once the machine resumes, at most)
RESUMED_AFTER = 5.0  # seconds the boot clock must gain on the monotonic one to count as a suspend


def open_sleep_order(rt: WorkerRuntime, raw: object, rq_id: str | None) -> SleepOrder:
    """The sleep order in a queued job's argument: sealed by the manager with this node's key, for
    this node, newer than any sleep order obeyed before. WireError says what is wrong."""
    sealed, body = rt.unseal(raw, "sleep order")
    order = SleepOrder.parse(body)
    if order.node != rt.name or order.seq != sealed.seq:
        raise WireError(f"sleep order: the order for {order.node!r} is not this seal's")
    if rq_id is not None and rq_id != f"{rt.credentials.node_id}-sleep{order.seq}":
        raise WireError(f"sleep order: RQ job {rq_id[:80]!r} carries sleep order {order.seq}")
    if order.seq <= rt.sleep_seq:
        raise WireError(f"sleep order: replayed (number {order.seq}, the last obeyed was {rt.sleep_seq})")
    return order


def go_to_sleep(rt: WorkerRuntime, order: SleepOrder) -> dict:
    """Say `asleep`, then run the sleep command. A node that holds work, or whose command fails,
    stays awake and says so in its heartbeat (the manager takes it back then)."""
    from renderfarm.wake import wake_argv

    rt.sleep_seq = order.seq
    if rt.lease is not None or rt.holding or rt.stopping:
        log.info("not sleeping: this worker holds work or is stopping")
        return {"slept": False}
    try:
        argv = wake_argv(rt.settings.sleep_command or "", rt.name, None)
    except ConfigError as e:
        log.error("cannot sleep: sleep_command: %s", e)
        return {"slept": False}
    log.info("idle %.0f s: going to sleep (%s)", order.idle, " ".join(argv))
    rt.asleep = True
    try:
        rt.beat()  # the manager and `farm workers` know at once, before the machine goes
    except Exception as e:  # noqa: BLE001 - the heartbeat thread says it again
        log.warning("could not say asleep: %s", e)
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=SLEEP_COMMAND_TIMEOUT,
                              check=False)
    except (OSError, subprocess.SubprocessError) as e:
        done = None
        why = str(e)
    else:
        why = f"exited {done.returncode}: {(done.stderr or b'').decode('utf-8', 'replace').strip()[-300:]}"
    if done is None or done.returncode != 0:
        log.error("sleep command %s failed (%s): staying awake", argv[0], why)
        rt.asleep = False
        try:
            rt.beat()
        except Exception:  # noqa: BLE001
            pass
        return {"slept": False}
    return {"slept": True}


class ResumeWatch:
    """Tells that the machine was suspended since the last look: CLOCK_BOOTTIME counts the
    time suspended, CLOCK_MONOTONIC does not."""

    def __init__(self) -> None:
        self._gap = self._now_gap()

    @staticmethod
    def _now_gap() -> float | None:
        boottime = getattr(time, "CLOCK_BOOTTIME", None)
        if boottime is None:
            return None
        return time.clock_gettime(boottime) - time.monotonic()

    def resumed(self) -> bool:
        gap = self._now_gap()
        if gap is None or self._gap is None:
            return False
        slept, self._gap = gap - self._gap, gap
        return slept > RESUMED_AFTER
