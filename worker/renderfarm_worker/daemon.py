"""farm-worker: the render node daemon. Takes tasks from its own RQ queue until told to stop."""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path

from renderfarm.capabilities import check_tags
from renderfarm.config import load_settings
from renderfarm.errors import RenderFarmError
from renderfarm.keys import queue_name
from renderfarm.planning import slug
from renderfarm.redisconn import connect

log = logging.getLogger("renderfarm.worker")

# Threads that talk to Redis at once: RQ's loop, its bookkeeper, the heartbeat, the event
# sender, the render's lease checks and live log, the finisher.
REDIS_CONNECTIONS = 8


def _positive(text: str) -> float:
    value = float(text)
    if not 0 < value < 1e6:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number of watts above 0")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="farm-worker", description="Render tasks the farm's manager hands this node.")
    p.add_argument("--name", default=None, help="worker name, unique on the farm (default: the host name)")
    p.add_argument("--pool", default="default", help="the pool this worker serves (default: default)")
    p.add_argument("--scratch", type=Path, default=None, help="scratch directory (default: <state dir>/scratch/<name>)")
    p.add_argument("--site", default=os.environ.get("FARM_SITE", "local"),
                   help="the site this node is at, one of farm.toml's [sites.NAME] (default: $FARM_SITE or local)")
    power = p.add_mutually_exclusive_group()
    power.add_argument("--watts", type=_positive, default=None, help="this node's power draw while rendering")
    power.add_argument("--watts-per-core", type=_positive, default=None,
                       help="or a draw per busy core, charged over the renderer's CPU time")
    p.add_argument("--tag", action="append", default=None, dest="tags", metavar="TAG",
                   help="a capability jobs may require (`farm submit --require TAG`); repeat or comma-separate "
                        "(default: $FARM_WORKER_TAGS)")
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty (for tests)")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("rq").setLevel(logging.WARNING)
    try:
        return run(args)
    except RenderFarmError as e:
        print(f"farm-worker: {e}", file=sys.stderr)
        return 1


def _check_name_free(r, name: str) -> None:
    """Refuse to start under the name of a live worker; a dead one's stale heartbeat on this
    host (it was killed a moment ago) does not count."""
    from renderfarm import presence

    other = presence.live_workers(r).get(name)
    if other is None:
        return
    if other.get("host") == socket.gethostname():
        try:
            pid = int(other.get("pid", 0))
            if pid <= 0:
                return
            os.kill(pid, 0)
        except (ProcessLookupError, ValueError, TypeError):
            return
        except PermissionError:
            pass
    raise RenderFarmError(f"a worker named {name!r} is already alive on {other.get('host')}; pass another --name")


def _work(rt, r, name: str, *, burst: bool) -> None:
    """Run RQ's work loop on our queue; when it ends without being asked to (it quits when Redis
    goes away), start it again once Redis answers, without restarting the process."""
    import redis
    from rq.exceptions import StopRequested
    from rq.serializers import JSONSerializer

    from renderfarm_worker.rqworker import FarmWorker

    backoff = 0.5
    try:
        for run_number in itertools.count(1):
            try:
                # A fresh RQ name each time: the previous registration may linger until it expires.
                worker = FarmWorker(
                    [queue_name(name)], connection=r, name=f"{name}.{os.getpid()}.{run_number}",
                    serializer=JSONSerializer,
                )
                worker.work(burst=burst, logging_level="WARNING")
            except redis.RedisError as e:
                log.warning("work loop lost Redis: %s", e)
            if rt.stopping or burst:
                return
            log.warning("work loop ended unasked; reconnecting in %.1f s", backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
            try:
                r.ping()
                backoff = 0.5
            except redis.RedisError:
                pass
    except StopRequested:  # SIGTERM between two runs of RQ's loop
        return


def open_connections(r, count: int) -> None:
    """Open `count` connections to Redis at start, side by side. A pool opens them as threads
    first need them, which is at the first hand-over between two tasks, where on a long link
    each new one (handshake, HELLO) would hold up the next render by two round trips."""
    from concurrent.futures import ThreadPoolExecutor

    import redis

    pool = r.connection_pool

    def take(_: int):
        try:
            return pool.get_connection()
        except TypeError:  # redis-py < 5.3 wants a command name
            return pool.get_connection("PING")

    with ThreadPoolExecutor(count) as ex:
        futures = [ex.submit(take, i) for i in range(count)]
    for f in futures:
        try:
            pool.release(f.result())
        except (redis.RedisError, OSError) as e:  # the pool opens it later instead
            log.debug("could not open a Redis connection ahead: %s", e)


def _reach_storage(rt) -> None:
    """Reach object storage once at start: a worker that cannot says so in its log at once, and
    the first scene download finds its connection open (a new one costs a round trip more)."""
    try:
        rt.storage.check()
    except RenderFarmError as e:
        log.warning("object storage: %s", e)


def run(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from renderfarm_worker.capabilities import find_worker_blender

    settings = load_settings()
    # `blender --version` takes a second: it runs while the rest starts.
    with ThreadPoolExecutor(1, "find-blender") as lookup:
        blender_found = lookup.submit(find_worker_blender, settings)
        return _serve(args, settings, blender_found)


def _serve(args: argparse.Namespace, settings, blender_found) -> int:
    from renderfarm_worker.capabilities import detect
    from renderfarm_worker.runtime import WorkerRuntime, install

    name = slug(args.name or socket.gethostname(), "name")
    pool = slug(args.pool, "pool")
    r = connect(settings)
    _check_name_free(r, name)
    scratch = args.scratch or settings.state_dir / "scratch" / name
    site = settings.site(args.site).name  # refuses a site farm.toml does not name
    tags = check_tags(args.tags if args.tags is not None else os.environ.get("FARM_WORKER_TAGS") or None, "tag")
    blender = blender_found.result()
    rt = WorkerRuntime(settings=settings, name=name, pool=pool, scratch=scratch, r=r, site=site,
                       watts=args.watts, watts_per_core=args.watts_per_core,
                       capabilities=detect(settings, tags, blender), blender=blender)
    install(rt)
    open_connections(r, REDIS_CONNECTIONS)
    threading.Thread(target=_reach_storage, args=(rt,), name="storage-check", daemon=True).start()
    rt.start_heartbeat()
    log.info("worker %s (pool %s, site %s, tags %s) serving queue %s", name, pool, site,
             ",".join(rt.capabilities["tags"]) or "none", queue_name(name))
    try:
        _work(rt, r, name, burst=args.burst)
    finally:
        rt.stopping = True
        rt.finisher.drain(timeout=rt.settings.storage_retry)  # its uploads are this worker's to finish
        rt.stop_heartbeat()
        rt.render_io.shutdown(wait=False, cancel_futures=True)
        rt.close_session()
        from renderfarm import presence

        try:
            presence.leave(r, name)
        except Exception as e:  # Redis may be down; the manager reaps us by heartbeat instead
            log.warning("could not withdraw heartbeat: %s", e)
        from renderfarm.wire import Bye

        rt.events.send(Bye(worker=name))
        if not rt.events.close(timeout=10.0):
            log.warning("some events could not be delivered before exit")
        install(None)
        log.info("worker %s stopped", name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
