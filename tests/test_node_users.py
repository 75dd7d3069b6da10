"""The nodes' Valkey users outlive what happens to Valkey: a new ACL file keeps the users an
earlier Valkey saved, a Valkey that lost them gets them back from the manager after its Redis
error, Valkey's files are its owner's alone, and what Valkey refused a node is counted once, also
across a manager's restart. A real Valkey and SQLite, the manager driven tick by tick."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import redis
from nodekit import enroll_in_process
from test_manager_loop import in_process_manager

from renderfarm import keys
from renderfarm.db import session_scope
from renderfarm.localfarm import services
from renderfarm.manager.nodebook import AclWatch, restore_missing
from renderfarm.models import Node
from renderfarm.redisconn import connect


def test_a_new_acl_file_keeps_the_saved_node_users_and_nobody_else(tmp_path: Path) -> None:
    data = tmp_path / "valkey"
    data.mkdir()
    node = "user node-r1 on #" + "ab" * 32 + " resetchannels -@all +ping\n"
    (data / "users.acl").write_text(
        "user default on #" + "cd" * 32 + " ~* &* +@all\n" + node + "user backdoor on nopass ~* &* +@all\n")
    services.valkey_argv(data, 1, "new-password", "127.0.0.1")
    lines = (data / "users.acl").read_text().splitlines(keepends=True)
    assert lines[0] == f"user default on #{hashlib.sha256(b'new-password').hexdigest()} ~* &* +@all\n"
    assert lines[1:] == [node]  # the planted user is not carried over
    assert (data / "users.acl").stat().st_mode & 0o777 == 0o600


def test_valkey_writes_its_acl_file_for_its_owner_alone(tmp_path: Path) -> None:
    data, port = tmp_path / "valkey", services.free_ports(1)[0]
    argv = services.valkey_argv(data, port, "pw", "127.0.0.1")
    proc = services.spawn(argv, cwd=tmp_path, env={}, log_path=tmp_path / "valkey.log", detach=False,
                          umask=services.umask_for("valkey"))
    try:
        client = redis.Redis(port=port, password="pw", socket_timeout=2)
        services.wait_until(client.ping, timeout=30, proc=proc, what="valkey", log_path=tmp_path / "valkey.log")
        client.execute_command("ACL", "SETUSER", "node-x", "on", "#" + "ef" * 32, "+ping")
        client.execute_command("ACL", "SAVE")  # Valkey writes a new file, with its own umask
        assert (data / "users.acl").stat().st_mode & 0o777 == 0o600
        assert "node-x" in (data / "users.acl").read_text()
        client.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_manager_puts_back_the_node_users_a_valkey_lost(redis_url: str, tmp_path: Path) -> None:
    manager = in_process_manager(redis_url, tmp_path)
    credentials = enroll_in_process(manager, "r2")
    node = redis.Redis.from_url(credentials.redis_url)
    assert node.ping()
    node.close()
    manager.r.execute_command("ACL", "DELUSER", "node-r2")  # as a Valkey back without its ACL file
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(credentials.redis_url).ping()
    manager._redis_failed = True  # what the loop records when a Redis call fails
    manager.restore_users()
    assert redis.Redis.from_url(credentials.redis_url).ping()
    assert not manager._redis_failed
    # A revoked node is not put back.
    manager.r.execute_command("ACL", "DELUSER", "node-r2")
    with session_scope(manager.engine) as session:
        session.get(Node, "r2").revoked_at = 1.0
    with session_scope(manager.engine) as session:
        assert restore_missing(session, manager.r) == []


def test_what_valkey_refused_a_node_is_counted_once_across_a_managers_restart(redis_url: str, tmp_path: Path) -> None:
    manager = in_process_manager(redis_url, tmp_path)
    credentials = enroll_in_process(manager, "r3")
    node = redis.Redis.from_url(credentials.redis_url)
    for _ in range(2):
        with pytest.raises(redis.exceptions.NoPermissionError):
            node.xadd(keys.CONTROL_STREAM, {"d": "{}"})
    with pytest.raises(redis.exceptions.NoPermissionError):
        node.config_set("maxmemory", "1mb")
    letters = AclWatch().letters(manager.r, manager.book, 1.0)
    assert sorted(letter.deliveries for letter in letters) == [1, 2]
    assert {letter.worker for letter in letters} == {"r3"}
    assert manager.book.refused["r3"] == 3
    # A manager started again reads the same log: nothing new, nothing counted twice...
    assert AclWatch().letters(manager.r, manager.book, 2.0) == []
    # ...until the node tries again.
    with pytest.raises(redis.exceptions.NoPermissionError):
        node.xadd(keys.CONTROL_STREAM, {"d": "{}"})
    again = AclWatch().letters(manager.r, manager.book, 3.0)
    assert [(letter.worker, letter.deliveries) for letter in again] == [("r3", 1)]
    assert manager.book.refused["r3"] == 4
    node.close()


def test_a_revoked_nodes_worker_is_told_its_credentials_are_refused(redis_url: str, tmp_path: Path) -> None:
    """Not that the farm is not running: it answers, but not to these credentials."""
    from renderfarm.errors import FarmNotRunningError

    manager = in_process_manager(redis_url, tmp_path)
    credentials = enroll_in_process(manager, "r4")
    manager.r.execute_command("ACL", "DELUSER", "node-r4")
    with pytest.raises(FarmNotRunningError) as refused:
        connect(credentials.settings(manager.settings))
    assert "refuses these credentials" in str(refused.value) and "farm node add" in str(refused.value)
    assert credentials.redis_url.split("@")[0].split(":")[-1] not in str(refused.value)  # no password shown
    manager.engine.dispose()
