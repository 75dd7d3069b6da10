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
from renderfarm.nodes import SECRET_VARS, TURNED_AWAY_EXIT
from renderfarm.planning import slug
from renderfarm.redisconn import connect
from renderfarm_worker import openjd_render

log = logging.getLogger("renderfarm.worker")

# Threads that talk to Redis at once: RQ's loop, its bookkeeper, the heartbeat, the event
# sender, the render's lease checks and live log, the finisher.
REDIS_CONNECTIONS = 8
# The farm refused this node's credentials (it was revoked): starting it again cannot help.
EXIT_TURNED_AWAY = TURNED_AWAY_EXIT


def _positive(text: str) -> float:
    value = float(text)
    if not 0 < value < 1e6:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number of watts above 0")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="farm-worker", description="Render tasks the farm's manager hands this node.")
    p.add_argument("--credentials", type=Path, default=os.environ.get("FARM_NODE_CREDENTIALS"),
                   help="the node's credentials file, as `farm node add NAME` wrote it (default: "
                        "$FARM_NODE_CREDENTIALS)")
    p.add_argument("--name", default=None, help="the node's name (default: the one its credentials name)")
    p.add_argument("--pool", default=None, help="the pool this worker serves (default: as enrolled)")
    p.add_argument("--scratch", type=Path, default=None, help="scratch directory (default: <state dir>/scratch/<name>)")
    p.add_argument("--site", default=os.environ.get("FARM_SITE"),
                   help="the site this node is at, one of farm.toml's [sites.NAME] (default: $FARM_SITE, or as "
                        "enrolled)")
    power = p.add_mutually_exclusive_group()
    power.add_argument("--watts", type=_positive, default=None, help="this node's power draw while rendering")
    power.add_argument("--watts-per-core", type=_positive, default=None,
                       help="or a draw per busy core, charged over the renderer's CPU time")
    p.add_argument("--tag", action="append", default=None, dest="tags", metavar="TAG",
                   help="a capability jobs may require (`farm submit --require TAG`); repeat or comma-separate "
                        "(default: $FARM_WORKER_TAGS, or as enrolled)")
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
    """Refuse to start as a node whose worker is alive already (its heartbeat is fresh); a dead
    one's stale heartbeat on this host (it was killed a moment ago) does not count."""
    from renderfarm.keys import heartbeat_key
    from renderfarm.localfarm.services import process_start_time
    from renderfarm.wire import Heartbeat, Sealed, WireError

    raw = r.get(heartbeat_key(name))
    try:
        other = Heartbeat.parse(Sealed.parse(raw).body) if raw is not None else None
    except WireError:
        return
    if other is None:
        return
    if other.host == socket.gethostname() and process_start_time(other.pid) is None:
        return  # gone, or a zombie nobody has reaped yet (kill -9 of a worker whose parent left)
    raise RenderFarmError(f"node {name!r} has a worker alive already on {other.host}")


def _forget_secrets() -> None:
    """Settings that could hold secrets leave this process's environment (a renderer's is
    scrubbed anyway; the node's own secrets never enter it: they are in its credentials file)."""
    for var in SECRET_VARS:
        os.environ.pop(var, None)


def _work(rt, r, name: str, node_id: str, *, burst: bool) -> None:
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
                    [queue_name(name)], connection=r, name=f"{node_id}.{os.getpid()}.{run_number}",
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

    from renderfarm.enrollment import read_credentials
    from renderfarm_worker.capabilities import find_worker_blender

    if args.credentials is None:
        raise RenderFarmError("no credentials: a node acts only as itself (`farm node add NAME` issues its "
                              "credentials file; pass it with --credentials FILE)")
    credentials = read_credentials(Path(args.credentials))
    if args.name is not None and args.name != credentials.name:
        raise RenderFarmError(f"--name: {args.name!r} is not the node these credentials are for ({credentials.name!r})")
    if not credentials.s3_access_key and os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        # Storage keys of the node's environment, where its credentials hold none: kept, not left in it.
        credentials = credentials.model_copy(update={"s3_access_key": os.environ["AWS_ACCESS_KEY_ID"],
                                                     "s3_secret_key": os.environ["AWS_SECRET_ACCESS_KEY"]})
    _forget_secrets()
    settings = credentials.settings(load_settings())
    args.credentials = credentials
    # `blender --version` takes a second: it runs while the rest starts.
    with ThreadPoolExecutor(1, "find-blender") as lookup:
        blender_found = lookup.submit(find_worker_blender, settings)
        return _serve(args, settings, blender_found)


def _serve(args: argparse.Namespace, settings, blender_found) -> int:
    from renderfarm.wake import own_mac
    from renderfarm_worker.capabilities import check_render_account, detect
    from renderfarm_worker.runtime import WorkerRuntime, install

    credentials = args.credentials
    name = credentials.name
    pool = slug(args.pool or credentials.pool, "pool")
    r = connect(settings)
    _check_name_free(r, name)
    scratch = args.scratch or settings.state_dir / "scratch" / name
    check_render_account(settings, scratch)  # FARM_RENDER_USER: refused now, not at the first render
    site = settings.site(args.site or credentials.site).name  # refuses a site farm.toml does not name
    given = args.tags if args.tags is not None else os.environ.get("FARM_WORKER_TAGS") or None
    tags = check_tags(given, "tag") if given is not None else credentials.tags
    blender = blender_found.result()
    capabilities = detect(settings, tags, blender, scratch)
    mac = own_mac(settings.worker_mac)  # where the manager's magic packet wakes it (FARM_SLEEP_AFTER)
    if mac:
        capabilities["mac"] = mac
    rt = WorkerRuntime(settings=settings, credentials=credentials, pool=pool, scratch=scratch, r=r, site=site,
                       watts=args.watts, watts_per_core=args.watts_per_core,
                       capabilities=capabilities, blender=blender)
    install(rt)
    open_connections(r, REDIS_CONNECTIONS)
    import renderfarm_worker.tasks  # noqa: F401  (RQ would import it at the first task, holding it up)
    if not credentials.s3_access_key:  # a node's own identity may not even ask for the bucket
        threading.Thread(target=_reach_storage, args=(rt,), name="storage-check", daemon=True).start()
    rt.start_heartbeat()
    log.info("worker %s (pool %s, site %s, tags %s) serving queue %s", name, pool, site,
             ",".join(rt.capabilities["tags"]) or "none", queue_name(name))
    try:
        _work(rt, r, name, credentials.node_id, burst=args.burst)
    finally:
        rt.stopping = True
        rt.finisher.drain(timeout=rt.settings.storage_retry)  # its uploads are this worker's to finish
        rt.stop_heartbeat()
        rt.render_io.shutdown(wait=False, cancel_futures=True)
        rt.close_session()
        openjd_render.close(rt)
        from renderfarm import presence

        try:
            presence.leave(r, name)
        except Exception as e:  # Redis may be down; the manager reaps us by heartbeat instead
            log.warning("could not withdraw heartbeat: %s", e)
        from renderfarm.wire import Bye

        rt.events.send(Bye(worker=name))
        # A node the farm turned away has no one to tell: it does not wait to.
        if not rt.events.close(timeout=0.0 if rt.turned_away else 10.0):
            log.warning("some events could not be delivered before exit")
        install(None)
        log.info("worker %s stopped", name)
    return EXIT_TURNED_AWAY if rt.turned_away else 0


if __name__ == "__main__":
    sys.exit(main())
