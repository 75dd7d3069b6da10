"""Hosts for network tests: Linux network namespaces joined to this host by a bridge (iproute2),
and a TCP proxy that delays every byte by a fixed time each way (the kernel here has no netem)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

PREFIX = "rfnet"  # every namespace and link these tests make starts with it
BRIDGE = f"{PREFIX}-br"
SUBNET = "10.231.0"  # a /24 unlikely to be in use: the host is .1, namespace i is .(i + 1)
HOST_ADDR = f"{SUBNET}.1"


def unavailable() -> str | None:
    """Why namespaces cannot be built here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"`ip netns` is unavailable: {probe.stderr.strip()}"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


@contextmanager
def built(hosts: Hosts) -> Iterator[Hosts]:
    """Build `hosts` for a test (skipped where namespaces cannot be made) and remove them after."""
    import pytest

    try:
        try:
            hosts.build()
        except RuntimeError as e:
            if "not permitted" not in str(e) and "denied" not in str(e):
                raise
            pytest.skip(f"cannot build network namespaces here: {e}")
        yield hosts
    finally:
        hosts.remove()


@dataclass
class Hosts:
    """`count` namespaces rfnet-w1.. with addresses 10.231.0.2.., bridged to the host at 10.231.0.1.
    Processes started with `spawn` are killed by `remove`, which also removes what a crashed
    earlier run left behind. Another `prefix` and `subnet` (a /24's first three numbers) give a
    test hosts of its own, which can be built while another test's are up."""

    count: int
    procs: list[subprocess.Popen] = field(default_factory=list)
    prefix: str = PREFIX  # at most 8 characters: interface names are `<prefix>-w<i>h`
    subnet: str = SUBNET

    @property
    def bridge(self) -> str:
        return f"{self.prefix}-br"

    @property
    def host_address(self) -> str:
        """This host's address on the bridge: the only one the namespaces reach."""
        return f"{self.subnet}.1"

    def names(self) -> list[str]:
        return [f"{self.prefix}-w{i}" for i in range(1, self.count + 1)]

    def address(self, index: int) -> str:
        return f"{self.subnet}.{index + 2}"

    def build(self) -> None:
        self.remove()
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.host_address}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, ns in enumerate(self.names()):
            host_end, ns_end = f"{ns}h", f"{ns}n"  # at most 15 characters
            _ip("netns", "add", ns)
            _ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
            _ip("link", "set", ns_end, "netns", ns)
            _ip("link", "set", host_end, "master", self.bridge)
            _ip("link", "set", host_end, "up")
            _ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", ns_end)
            _ip("-n", ns, "link", "set", ns_end, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def spawn(self, index: int, argv: list[str], *, env: dict[str, str], log_path, cwd) -> subprocess.Popen:
        """Run argv inside namespace `index` (`ip netns exec` execs it: the pid is the program's)."""
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.names()[index], *argv], env=env, cwd=cwd,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def stop(self, procs: list[subprocess.Popen], grace: float = 20.0) -> None:
        """SIGTERM, then SIGKILL what is still running after `grace` seconds."""
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def remove(self) -> None:
        """Kill what runs in our namespaces, then delete them and the bridge (idempotent)."""
        self.stop(self.procs, grace=10.0)
        self.procs.clear()
        listed = _ip("netns", "list", check=False).stdout.split()
        for ns in [n for n in listed if n.startswith(f"{self.prefix}-")]:
            for pid in _ip("netns", "pids", ns, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)  # left by a crashed run of these tests
                except (ProcessLookupError, ValueError):
                    pass
            _ip("netns", "del", ns, check=False)
        links = _ip("-o", "link", "show", check=False).stdout.splitlines()
        for line in links:
            name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
            if name.startswith(f"{self.prefix}-"):
                _ip("link", "del", name, check=False)


class DelayProxy:
    """Forwards TCP from a free port on `host` to each backend, holding each chunk `delay` seconds
    in each direction (order kept, chunks pipelined: bandwidth is not limited, only latency
    added). Runs an asyncio loop in a thread of its own. `source` is the address its connections
    to the backends come from, so a server can tell proxied clients apart."""

    def __init__(self, delay: float, host: str, backends: list[tuple[str, int]], source: str | None = None) -> None:
        self.delay, self.host, self.backends, self.source = delay, host, backends, source
        self.ports: dict[tuple[str, int], int] = {}  # backend -> the proxy's port for it
        self._loop = asyncio.new_event_loop()
        self._servers: list[asyncio.AbstractServer] = []
        self._thread = threading.Thread(target=self._loop.run_forever, name="delay-proxy", daemon=True)

    def start(self) -> DelayProxy:
        self._thread.start()
        for backend in self.backends:
            server = asyncio.run_coroutine_threadsafe(self._serve(backend), self._loop).result(10)
            self._servers.append(server)
            self.ports[backend] = server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, backend: tuple[str, int]) -> asyncio.AbstractServer:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(2 * self.delay)  # a new connection costs a round trip (the handshake)
            try:
                local = (self.source, 0) if self.source else None
                b_reader, b_writer = await asyncio.open_connection(*backend, local_addr=local)
            except OSError:
                writer.close()
                return
            try:
                await asyncio.gather(self._pipe(reader, b_writer), self._pipe(b_reader, writer))
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                for w in (writer, b_writer):
                    w.close()

        return await asyncio.start_server(handle, self.host, 0)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction: this reads and stamps each chunk, a sender writes it `delay` later;
        the end of the stream is passed on (as a half close) just as late."""
        queue: asyncio.Queue = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                wait = due - self._loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(send())
        try:
            while True:
                try:
                    data = await reader.read(65536)
                except OSError:
                    data = b""
                await queue.put((self._loop.time() + self.delay, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()

    def close(self) -> None:
        async def shut() -> None:
            for server in self._servers:
                server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
