"""Where attempts' outputs are verified and promoted: in threads of the manager's own process,
or in processes of their own.

Verifying a frame is CPU work in Python (two signed S3 requests, a SHA-256, a decode): in
threads it holds the interpreter lock the manager's loop needs, so on a busy farm the loop and
the checks take turns on one core. A manager process started by `run_manager` therefore checks
in `FARM_VERIFY_PROCESSES` processes of its own (default: one per core beyond two, at most
4), each with its own storage client and threads; a manager built in a test's process
checks in threads unless told otherwise. Either way the loop only waits for an outcome when it
applies the attempt's done event (renderfarm.manager.intake.promote_ahead).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from renderfarm.errors import StorageError, VerificationError

if TYPE_CHECKING:
    from renderfarm.config import Settings
    from renderfarm.manager.intake import Promotion
    from renderfarm.storage import Storage
    from renderfarm.wire import Output

log = logging.getLogger("renderfarm.manager")

THREADS = 16  # storage requests in flight at once (in each process, where there are processes)
MAX_PROCESSES = 4


def default_processes() -> int:
    """Checker processes for a manager with cores to spare: one per core beyond two (the loop's,
    and one left to the farm's own servers), at most MAX_PROCESSES. On a 2-core machine, none:
    measured there, with Valkey and SeaweedFS on the same cores, processes gained nothing."""
    return max(0, min(MAX_PROCESSES, (os.cpu_count() or 1) - 2))


def verify(storage: Storage, outputs: list[Output], where: dict) -> tuple[list[str], list]:
    """Verify and promote an attempt's outputs (`where`: intake._where's plain values): its
    attempt's own copies to delete once it is committed, and (an OpenJD task's) the files
    committed, to record."""
    from renderfarm.manager.verify import verify_and_promote

    if "step" in where:
        from renderfarm.manager.openjd_outputs import verify_and_promote_files

        return verify_and_promote_files(storage, outputs, **where)
    return verify_and_promote(storage, outputs, **where), []


def final_keys(where: dict, outputs: list[Output]) -> list[str]:
    """Where an attempt's outputs are committed."""
    if "step" in where:
        from renderfarm.manager.openjd_outputs import final_keys as openjd_keys

        return openjd_keys(where["job_id"], where["step"], outputs)
    return [e.final_key for e in where["expected"]]


def settle(storage: Storage, where: dict, outputs: list[Output]) -> Promotion:
    """Verify and promote one attempt's outputs; a storage or verification error is the outcome."""
    from renderfarm.manager.intake import Promotion

    keys = final_keys(where, outputs)
    try:
        leftovers, committed = verify(storage, outputs, where)
        return Promotion(keys, leftovers=leftovers, committed=committed)
    except (StorageError, VerificationError) as e:
        return Promotion(keys, error=e)


class Verifier:
    """Runs `settle` for the manager: in `processes` processes (0: in threads here)."""

    def __init__(self, storage: Storage, settings: Settings | None = None, processes: int = 0) -> None:
        self.storage = storage
        self.settings = settings
        self.processes = processes if settings is not None else 0
        self._pool = None  # a ProcessPoolExecutor, started with the first check

    def submit(self, work: dict[int, tuple[dict, list[Output]]]) -> dict[int, Future[Promotion]]:
        """Start settling each attempt's (where, outputs); its outcome to come, by attempt id."""
        if not self.processes:
            threads = _shared_threads()
            return {a: threads.submit(settle, self.storage, where, outputs) for a, (where, outputs) in work.items()}
        from concurrent.futures.process import BrokenProcessPool

        outcomes: dict[int, Future[Promotion]] = {a: Future() for a in work}
        items = list(work.items())
        share = -(-len(items) // self.processes)
        pool = self._processes()
        for part in (items[i:i + share] for i in range(0, len(items), share)):
            def finished(done: Future, part=part) -> None:
                try:
                    results = done.result()
                except BrokenProcessPool as e:  # a checker died (killed, out of memory): later, again
                    self._broken(pool)
                    results = [_failed(w, o, StorageError(f"output checker died: {e}", transient=True))
                               for _, (w, o) in part]
                except BaseException as e:
                    for a, _ in part:
                        outcomes[a].set_exception(e)
                    return
                for (a, _), result in zip(part, results):
                    outcomes[a].set_result(result)

            try:
                pool.submit(_settle_here, [item for _, item in part]).add_done_callback(finished)
            except BrokenProcessPool as e:
                self._broken(pool)
                for a, (w, o) in part:
                    outcomes[a].set_result(_failed(w, o, StorageError(f"output checker died: {e}", transient=True)))
        return outcomes

    def _processes(self):
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: the manager has threads (a fork copies their locks mid-use)
            self._pool = ProcessPoolExecutor(max_workers=self.processes, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_open_here, initargs=(self.settings,))
        return self._pool

    def _broken(self, pool) -> None:
        if self._pool is pool:
            log.warning("an output checker process died; starting them again")
            self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


_SHARED: ThreadPoolExecutor | None = None


def _shared_threads() -> ThreadPoolExecutor:
    """The threads every Verifier of this process without processes checks in (a test's process
    builds many managers: one pool for all, as before there were processes)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="promote-ahead")
    return _SHARED


def _failed(where: dict, outputs: list[Output], error: Exception) -> Promotion:
    from renderfarm.manager.intake import Promotion

    return Promotion(final_keys(where, outputs), error=error)


# -- in a checker process ----------------------------------------------------------------------

_STORAGE: Storage | None = None
_THREADS: ThreadPoolExecutor | None = None


def _open_here(settings: Settings) -> None:
    import signal

    global _STORAGE
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the manager stops its checkers itself
    from renderfarm.storage import open_storage

    _STORAGE = open_storage(settings)


def _settle_here(items: list[tuple[dict, list[Output]]]) -> list[Promotion]:
    """Settle a share of a batch, side by side in this process's threads."""
    global _THREADS
    assert _STORAGE is not None
    if len(items) == 1:
        return [settle(_STORAGE, *items[0])]
    if _THREADS is None:
        _THREADS = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="promote")
    return list(_THREADS.map(lambda item: settle(_STORAGE, *item), items))
