"""Sleeping idle nodes on a real Valkey and SQLite, the manager in this process with a stepped
clock: a node idle FARM_SLEEP_AFTER seconds gets a sealed sleep order and shows `asleep`; work
for it sends a Wake-on-LAN magic packet (caught by a UDP socket here, byte for byte) or runs the
wake command; it renders once it beats again; a node that does not wake is reported and its work
goes elsewhere."""

from __future__ import annotations

import socket
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import wait_for
from nodekit import stepped_farm
from rq import Queue
from rq.serializers import JSONSerializer

from renderfarm import keys, presence, queues, streams
from renderfarm.clock import SteppedClock
from renderfarm.errors import ConfigError
from renderfarm.models import AttemptState
from renderfarm.wake import magic_packet, normal_mac, wake_argv
from renderfarm.wire import Capabilities, Sealed, SleepOrder

MACS = {"a": "52:54:00:00:00:0a", "b": "52:54:00:00:00:0b"}
SLEEP_AFTER = 600


def test_the_magic_packet_is_six_ff_then_the_mac_sixteen_times() -> None:
    packet = magic_packet("52:54:00:12:34:56")
    assert len(packet) == 102
    assert packet == b"\xff\xff\xff\xff\xff\xff" + b"\x52\x54\x00\x12\x34\x56" * 16
    assert magic_packet("52-54-00-12-34-56") == magic_packet("5254.0012.3456") == packet
    assert normal_mac("52:54:00:AB:CD:EF") == "52:54:00:ab:cd:ef"
    for bad in ("52:54:00:12:34", "zz:54:00:12:34:56", "00:00:00:00:00:00", ""):
        with pytest.raises(ConfigError, match="MAC address"):
            normal_mac(bad)
    assert wake_argv("ipmitool -H {node}-bmc power on", "n1", None) == ["ipmitool", "-H", "n1-bmc", "power", "on"]
    assert wake_argv("ssh waker 'wakeonlan {mac}'", "n1", "52:54:00:12:34:56") == [
        "ssh", "waker", "wakeonlan 52:54:00:12:34:56"]


@contextmanager
def listener():
    """A UDP socket on a free loopback port: where the manager's magic packets go in these tests."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5.0)
    try:
        yield sock
    finally:
        sock.close()


def sleepy_farm(redis_url: str, tmp_path: Path, names=("a",), **env: str):
    clock = SteppedClock()
    settings = {"FARM_SLEEP_AFTER": str(SLEEP_AFTER), "FARM_WAKE_TIMEOUT": "120", **env}
    return clock, stepped_farm(redis_url, tmp_path, names, clock=clock, env=settings)


def beat(farm, *names: str, state: str = "idle") -> None:
    """The nodes beat as workers do (advertising their MACs), and the manager looks."""
    for name in names:
        farm.nodes[name].beat(farm.manager.r, ttl=30.0, state=state, capabilities=Capabilities(renderers={"null": "1"}, mac=MACS[name]))
    farm.manager.tick()


def queued_orders(farm, name: str) -> list[tuple[str, str, dict]]:
    """(RQ function, RQ id, the opened order) of each job waiting in a node's queue."""
    queue = Queue(keys.queue_name(name), connection=farm.manager.r, serializer=JSONSerializer)
    return [(job.func_name, job.id, farm.nodes[name].open(job.args[0])) for job in queue.jobs]


def put_to_sleep(farm, clock, *names: str) -> None:
    """Idle past FARM_SLEEP_AFTER: each node gets its sleep order, obeys (says `asleep`) and goes
    quiet (its heartbeat key gone, as a suspended machine's expires)."""
    beat(farm, *names)
    clock.advance(SLEEP_AFTER - 1)
    beat(farm, *names)
    assert all(queued_orders(farm, n) == [] for n in names)  # not idle long enough yet
    clock.advance(2)
    beat(farm, *names)
    for name in names:
        [(function, rq_id, order)] = queued_orders(farm, name)
        assert function == queues.SLEEP_TASK
        assert order == {"order": "sleep", "node": name, "seq": order["seq"], "idle": float(SLEEP_AFTER + 1)}
        assert rq_id == f"{farm.nodes[name].credentials.node_id}-sleep{order['seq']}"
        Queue(keys.queue_name(name), connection=farm.manager.r, serializer=JSONSerializer).empty()  # taken
    assert farm.shown() == {**farm.shown(), **{n: "asleep" for n in names}}
    beat(farm, *names, state="asleep")
    for name in names:
        presence.leave(farm.manager.r, name)
    clock.advance(300)  # far past the heartbeat TTL: an asleep node is not reaped as gone
    for _ in range(3):
        farm.manager.tick()
        clock.advance(1)
    assert {n: s for n, s in farm.shown().items() if n in names} == {n: "asleep" for n in names}


def test_an_idle_node_sleeps_and_a_magic_packet_wakes_it_for_new_work(redis_url: str, tmp_path: Path) -> None:
    with listener() as udp:
        clock, farm_ = sleepy_farm(redis_url, tmp_path, FARM_WAKE_ADDRESS="127.0.0.1",
                                   FARM_WAKE_PORT=str(udp.getsockname()[1]))
        with farm_ as farm:
            put_to_sleep(farm, clock, "a")
            farm.submit()
            assert farm.attempts() == []  # an asleep node is given nothing...
            packet, _ = udp.recvfrom(1024)  # ...but woken: six 0xFF, then its MAC 16 times
            assert packet == b"\xff" * 6 + bytes.fromhex("52540000000a") * 16
            assert farm.shown()["a"] == "waking"  # woken, not back yet
            for _ in range(3):  # not woken again while it wakes
                clock.advance(1)
                farm.manager.tick()
            udp.settimeout(0.2)
            with pytest.raises(TimeoutError):
                udp.recvfrom(1024)
            assert farm.attempts() == []
            beat(farm, "a", state="asleep")  # back: it beats again (still saying asleep)
            assert farm.shown()["a"] == "idle"
            farm.render_all()
            assert farm.job_state() == "done"
            assert {w for _a, w, _s in farm.attempts()} == {"a"}


def test_a_held_node_that_sleeps_shows_asleep_with_its_hold_beside_it(redis_url: str, tmp_path: Path) -> None:
    """`farm workers` showed a drained or disabled node that had gone to sleep as `drained` or
    `disabled`, as if it were awake: its state is `asleep`, its hold in `hold`, and awake again
    it shows its hold."""
    from renderfarm.db import session_scope
    from renderfarm.status import list_workers

    clock, farm_ = sleepy_farm(redis_url, tmp_path, names=("a", "b"))
    with farm_ as farm:
        put_to_sleep(farm, clock, "a", "b")
        assert farm.hold("a", "drain").ok and farm.hold("b", "disable").ok
        with session_scope(farm.manager.engine) as s:
            shown = {w.name: (w.state, w.hold) for w in list_workers(s, {n: {"state": "idle"} for n in "ab"})}
        assert shown == {"a": ("asleep", "drain"), "b": ("asleep", "disable")}
        table = farm.cli("workers").splitlines()  # and so does the table, in words
        rows = {row.split()[0]: row for row in table[1:]}
        assert rows.keys() == {"a", "b"}
        assert "asleep, drained" in rows["a"] and "asleep, disabled" in rows["b"]
        beat(farm, "a", "b", state="idle")  # it woke by itself
        assert farm.shown() == {"a": "drained", "b": "disabled"}


def test_the_wake_command_runs_with_the_node_name_and_mac(redis_url: str, tmp_path: Path) -> None:
    record = tmp_path / "woken.txt"
    command = f"{sys.executable} -c 'import sys; open(sys.argv[1], \"a\").write(\" \".join(sys.argv[2:]))' " \
              f"{record} {{node}} {{mac}}"
    clock, farm_ = sleepy_farm(redis_url, tmp_path, FARM_WAKE_COMMAND=command)
    with farm_ as farm:
        put_to_sleep(farm, clock, "a")
        farm.submit()
        wait_for(lambda: record.exists() and record.read_text() == "a 52:54:00:00:00:0a", 10, "the wake command")
        beat(farm, "a")
        farm.render_all()
        assert farm.job_state() == "done"


def test_a_node_that_does_not_wake_is_reported_and_its_work_goes_to_another(redis_url: str, tmp_path: Path) -> None:
    with listener() as udp:
        clock, farm_ = sleepy_farm(redis_url, tmp_path, ("a", "b"), FARM_WAKE_ADDRESS="127.0.0.1",
                                   FARM_WAKE_PORT=str(udp.getsockname()[1]))
        with farm_ as farm:
            put_to_sleep(farm, clock, "a", "b")
            farm.submit()  # six tasks: both are woken
            woken = {udp.recvfrom(1024)[0][-6:] for _ in range(2)}
            assert woken == {bytes.fromhex("52540000000a"), bytes.fromhex("52540000000b")}
            assert farm.shown() == {"a": "waking", "b": "waking"}
            beat(farm, "b")  # b is back, a never comes
            while queued := farm.attempts(AttemptState.QUEUED):
                for attempt_id, _w, _s in queued:
                    farm.render(attempt_id)
                beat(farm, "b")
            assert farm.job_state() == "done"
            assert {w for _a, w, _s in farm.attempts()} == {"b"}
            assert streams.dead_letters(farm.manager.r) == []
            assert farm.shown() == {"a": "waking", "b": "idle"}
            clock.advance(120)
            farm.manager.tick()
            [(_id, letter)] = streams.dead_letters(farm.manager.r)
            assert (letter.source, letter.worker) == ("wake", "a")
            assert letter.reason == ("worker a did not wake within 120 s (magic packet to 52:54:00:00:00:0a via "
                                     f"127.0.0.1:{udp.getsockname()[1]}); its work goes to the awake workers")
            assert farm.shown()["a"] == "asleep"


def test_a_node_that_stays_awake_is_taken_back_and_a_sleep_order_is_sealed_for_its_node(
        redis_url: str, tmp_path: Path) -> None:
    clock, farm_ = sleepy_farm(redis_url, tmp_path, ("a", "b"))
    with farm_ as farm:
        beat(farm, "a", "b")
        clock.advance(SLEEP_AFTER + 1)
        beat(farm, "a", "b")
        [(_f, _id, order)] = queued_orders(farm, "a")
        raw = Queue(keys.queue_name("a"), connection=farm.manager.r, serializer=JSONSerializer).jobs[0].args[0]
        sealed = Sealed.parse(raw)
        assert SleepOrder.parse(sealed.check(farm.nodes["a"].credentials.key)).node == "a"
        with pytest.raises(Exception, match="the seal is not a's"):  # b's key does not open it
            sealed.check(farm.nodes["b"].credentials.key)
        # a's sleep command failed: it goes on beating idle; after the order's grace it is awake again.
        clock.advance(30)
        beat(farm, "a", "b", state="idle")
        assert farm.shown()["a"] == "asleep"
        clock.advance(31)
        beat(farm, "a", "b", state="idle")
        assert farm.shown()["a"] == "idle"
        farm.submit()
        beat(farm, "a", "b")
        assert {w for _a, w, _s in farm.attempts()} == {"a", "b"}


@pytest.mark.parametrize(("env", "message"), [
    ({"FARM_SLEEP_AFTER": "-1"}, "sleep_after (from env FARM_SLEEP_AFTER): -1 must be 0 (never) or more seconds"),
    ({"FARM_WAKE_PORT": "70000"}, "wake_port (from env FARM_WAKE_PORT): 70000 must be 1 to 65535"),
    ({"FARM_WAKE_TIMEOUT": "0"}, "wake_timeout (from env FARM_WAKE_TIMEOUT): 0 must be more than 0 seconds"),
    ({"FARM_WORKER_MAC": "52:54:00"},
     "worker_mac (from env FARM_WORKER_MAC): '52:54:00' is not a MAC address (e.g. 52:54:00:12:34:56)"),
    ({"FARM_WAKE_COMMAND": "ipmitool 'power on"},
     "wake_command (from env FARM_WAKE_COMMAND): \"ipmitool 'power on\" does not split into words "
     "(No closing quotation)"),
])
def test_sleep_and_wake_settings_are_checked(tmp_path: Path, env: dict, message: str) -> None:
    from renderfarm.config import load_settings

    with pytest.raises(ConfigError) as e:
        load_settings({"FARM_STATE_DIR": str(tmp_path), **env}, cwd=tmp_path)
    assert str(e.value) == message


def test_a_worker_sleeps_only_on_its_own_newest_sleep_order(redis_url: str, tmp_path: Path) -> None:
    """The worker's side, with a real runtime and RQ work loop: an order sealed with another
    node's key, one under an RQ id not its own, and a replay are refused (reported as events);
    its own new order runs its sleep command, after which it says `asleep`."""
    import redis
    from nodekit import events_of, unenrolled
    from renderfarm_worker import runtime
    from renderfarm_worker.rqworker import FarmWorker

    from renderfarm.config import load_settings

    record = tmp_path / "slept.txt"
    r = redis.Redis.from_url(redis_url)
    settings = load_settings({"FARM_STATE_DIR": str(tmp_path), "FARM_REDIS_URL": redis_url,
                              "FARM_STORAGE_URL": f"file://{tmp_path / 'store'}",
                              "FARM_SLEEP_COMMAND": f"sh -c 'echo slept >> {record}'"}, cwd=tmp_path)
    credentials = unenrolled("s", settings)
    rt = runtime.WorkerRuntime(settings=settings, credentials=credentials, pool="default",
                               scratch=tmp_path / "scratch", r=r)
    runtime.install(rt)
    queue = Queue(keys.queue_name("s"), connection=r, serializer=JSONSerializer)
    node_id = credentials.node_id

    def order(seq: int, key: str = credentials.key, rq_id: str | None = None) -> None:
        sealed = Sealed.seal(SleepOrder(node="s", seq=seq, idle=600.0), node="s", seq=seq, key=key).to_json()
        queues.enqueue_sleep(r, "s", sealed, rq_id or f"{node_id}-sleep{seq}")

    def work() -> None:
        FarmWorker([queue.name], connection=r, name=f"{node_id}.1.1", serializer=JSONSerializer).work(
            burst=True, logging_level="WARNING")

    try:
        order(5, key="x" * 32)  # not sealed with this node's key
        order(6, rq_id=f"{node_id}-sleep7")
        work()
        assert not record.exists() and rt.info().state == "idle"
        order(8)
        work()
        assert record.read_text() == "slept\n" and rt.info().state == "asleep"
        order(8)  # the same order again
        work()
        assert rt.events.flush(10)
    finally:
        runtime.install(None)
    assert record.read_text() == "slept\n"
    assert [(e.rq_id, e.reason) for e in events_of(r, "s")] == [
        (f"{node_id}-sleep5", "sealed message: the seal is not s's"),
        (f"{node_id}-sleep7", f"sleep order: RQ job '{node_id}-sleep7' carries sleep order 6"),
        (f"{node_id}-sleep8", "sleep order: replayed (number 8, the last obeyed was 8)"),
    ]


def test_a_restarted_manager_still_knows_the_asleep_node_and_wakes_it(redis_url: str, tmp_path: Path) -> None:
    from test_manager_loop import in_process_manager

    with listener() as udp:
        env = {"FARM_SLEEP_AFTER": str(SLEEP_AFTER), "FARM_WAKE_ADDRESS": "127.0.0.1",
               "FARM_WAKE_PORT": str(udp.getsockname()[1])}
        clock, farm_ = sleepy_farm(redis_url, tmp_path, **env)
        with farm_ as farm:
            put_to_sleep(farm, clock, "a")
            first, farm.manager = farm.manager, in_process_manager(redis_url, tmp_path, clock, env)
            try:
                for _ in range(3):  # its reaper does not take the silent node for gone either
                    clock.advance(60)
                    farm.manager.tick()
                assert farm.shown()["a"] == "asleep"
                farm.submit()
                packet, _ = udp.recvfrom(1024)  # the MAC it advertised, from the database
                assert packet == magic_packet(MACS["a"])
                assert farm.shown()["a"] == "waking"
                # Restarted while it wakes: still asleep to the new manager, which wakes it again.
                farm.manager.engine.dispose()
                farm.manager = in_process_manager(redis_url, tmp_path, clock, env)
                assert farm.shown()["a"] == "asleep"
                farm.manager.tick()
                packet, _ = udp.recvfrom(1024)
                assert packet == magic_packet(MACS["a"])
                assert farm.shown()["a"] == "waking"
                beat(farm, "a")
                farm.render_all()
                assert farm.job_state() == "done"
            finally:
                farm.manager.engine.dispose()
                farm.manager = first
