"""The S3 identities of the local farm's SeaweedFS: the farm's own (admin) one and one per enrolled
render node, confined to the node's own prefix; and presigned URLs for what a node must read.

A node's identity `node-NAME` may read, write and delete objects under `<prefix>nodes/NAME/` and
nothing else: no listing, no other key, no bucket operation. What it must read beyond that (the
scene, a task's inputs) travels as a presigned URL (`grant_url`) in the signed task order.

The identities live in the SeaweedFS static config file (`<state>/s3/s3.json`, 0600) that `weed
mini` (`-s3.config`) or the `--listen` gateway (`weed s3 -config`) reads. Changes reach the running
server by SIGHUP: SeaweedFS then reloads that file. Checked on weed 4.48:
- the reload *merges*: an identity added or changed in the file takes effect within milliseconds,
  but one removed from the file stays in force until the server restarts. So revocation keeps the
  name in the file, disabled and without credentials (a tombstone): the reload replaces the live
  identity with it and forgets its access key. A starting server has no memory, so the file it
  starts with (`start_config`) drops the tombstones.
- SIGHUP never stops weed (its signal handler is installed before anything else), but one sent
  while a server is starting may come before it listens for reloads: every change is checked
  with a signed request under the node's own keys and the signal repeated until it shows.
- `weed shell s3.configure` works too (stored in the filer, pushed to S3 servers), but the filer
  serves what it stores on its unauthenticated HTTP port: the secrets stay in the 0600 file instead.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from renderfarm.errors import InputError, StorageError, shown
from renderfarm.localfarm.services import s3_config_path, write_private
from renderfarm.nodes import check_node_name

if TYPE_CHECKING:
    from renderfarm.config import Settings

ADMIN_IDENTITY = "renderfarm"  # the farm's own identity (the manager's, the CLI's)
ADMIN_ACTIONS = ["Admin", "Read", "Write", "List", "Tagging"]
NODE_IDENTITY_PREFIX = "node-"
APPLY_TIMEOUT = 5.0  # seconds for a running server to show a change; it takes milliseconds
_ACCESS_KEY = re.compile(r"[A-Za-z0-9]{16,128}")
_SECRET_KEY = re.compile(r"[A-Za-z0-9_+/=-]{16,128}")
PROBE_KEY = ".identity-probe"  # a key no one writes: HEAD answers 404 to a live identity, 403 otherwise


def node_prefix(name: str) -> str:
    """Where everything node NAME writes lives, below the storage prefix."""
    return f"nodes/{check_node_name(name)}/"


def node_actions(bucket: str, prefix: str, name: str) -> list[str]:
    """The SeaweedFS actions of node NAME: read, write (PUT, multipart, copy into) and delete its
    own objects; `Write` covers deletion, `List` is not given."""
    where = f"{bucket}/{prefix}{node_prefix(name)}*"
    return [f"Read:{where}", f"Write:{where}"]


# -- the farm's side ---------------------------------------------------------------------------


def grant(settings: Settings, name: str, keys: tuple[str, str] | None = None) -> tuple[str, str] | None:
    """Give node NAME its own S3 identity (`node-NAME`) on the local farm's SeaweedFS, with `keys`
    (access, secret) or fresh ones, replacing any it had; returns the keys. Idempotent: the
    manager re-grants every enrolled node with its stored keys at start. Takes effect on the
    running server before it returns (StorageError if it does not within APPLY_TIMEOUT). None
    when the local farm is not the farm's storage: the admin then gives nodes keys of their own."""
    from renderfarm.storage.s3 import local_credentials

    where = _local_bucket(settings)
    if where is None:
        return None
    bucket, prefix = where
    check_node_name(name)
    access, secret = _check_keys(keys) if keys is not None else _new_keys()
    if access == local_credentials(settings)[0]:
        raise InputError(f"node {name}: access key {shown(access)} is the farm's own")
    identity = {
        "name": NODE_IDENTITY_PREFIX + name,
        "credentials": [{"accessKey": access, "secretKey": secret}],
        "actions": node_actions(bucket, prefix, name),
    }
    path = s3_config_path(settings.state_dir / "s3")
    with _locked(path):
        config = _read(path)
        for other in config["identities"]:
            if other.get("name") != identity["name"] and access in _access_keys(other):
                raise InputError(f"node {name}: access key {shown(access)} is already identity {other.get('name')!r}'s")
        unchanged = identity in config["identities"]
        if not unchanged:
            config["identities"] = [i for i in config["identities"] if i.get("name") != identity["name"]]
            config["identities"].append(identity)
            write_private(path, json.dumps(config, indent=1))
        _apply(settings, path, name, (access, secret), live=True, signal_first=not unchanged)
    return access, secret


def revoke(settings: Settings, name: str) -> bool:
    """Take node NAME's S3 identity away: its next request is refused once this returns
    (StorageError if the running server does not show it within APPLY_TIMEOUT). False when the
    local farm is not the storage or the node had no identity."""
    if _local_bucket(settings) is None:
        return False
    check_node_name(name)
    path = s3_config_path(settings.state_dir / "s3")
    with _locked(path):
        config = _read(path)
        ident_name = NODE_IDENTITY_PREFIX + name
        old = next((i for i in config["identities"] if i.get("name") == ident_name), None)
        if old is None or old.get("disabled"):
            return False
        old_keys = next(((c["accessKey"], c["secretKey"]) for c in old.get("credentials") or []), None)
        # Not removed: a reload keeps an identity the file no longer names (see the module's doc).
        config["identities"] = [i for i in config["identities"] if i.get("name") != ident_name]
        config["identities"].append({"name": ident_name, "disabled": True})
        write_private(path, json.dumps(config, indent=1))
        _apply(settings, path, name, old_keys, live=False, signal_first=True)
    return True


def serves_storage(settings: Settings) -> bool:
    """Whether the local farm's SeaweedFS is the farm's storage (nodes have identities on it)."""
    return _local_bucket(settings) is not None


def granted(settings: Settings) -> list[str]:
    """The nodes that hold an S3 identity now (revoked ones aside), for the manager to reconcile
    with the nodes it has enrolled. Empty when the local farm is not the storage."""
    if _local_bucket(settings) is None:
        return []
    path = s3_config_path(settings.state_dir / "s3")
    return sorted(
        i["name"].removeprefix(NODE_IDENTITY_PREFIX) for i in _read(path)["identities"]
        if i.get("name", "").startswith(NODE_IDENTITY_PREFIX) and not i.get("disabled")
    )


def grant_url(settings: Settings, key: str, expires: int) -> str | None:
    """A URL that lets whoever holds it GET one object for `expires` seconds, signed with the farm's
    own credentials (any S3 store, the local farm's or not). None for file:// storage, which
    nodes read directly."""
    from renderfarm.storage import open_storage

    storage = open_storage(settings)
    presign = getattr(storage, "presigned_get", None)
    return presign(key, expires) if presign is not None else None


# -- the file SeaweedFS starts with -------------------------------------------------------------


def start_config(data_dir: Path, access_key: str, secret_key: str) -> Path:
    """Write the identity file for a starting SeaweedFS (0600): the farm's own identity with these
    keys, the nodes' identities as they were, revoked ones dropped (a starting server has none of
    them in memory). Returns its path."""
    path = s3_config_path(data_dir)
    admin = {
        "name": ADMIN_IDENTITY,
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ADMIN_ACTIONS,
    }
    with _locked(path):
        nodes = [
            i for i in _read(path)["identities"]
            if i.get("name", "").startswith(NODE_IDENTITY_PREFIX) and not i.get("disabled")
            and access_key not in _access_keys(i)
        ]
        write_private(path, json.dumps({"identities": [admin, *nodes]}, indent=1))
    return path


# -- inside --------------------------------------------------------------------------------------


def _local_bucket(settings: Settings) -> tuple[str, str] | None:
    """The bucket and key prefix of the storage when it is the local farm's SeaweedFS, else None."""
    from renderfarm.storage.s3 import local_credentials

    if not settings.storage_url.startswith("s3://") or local_credentials(settings) is None:
        return None
    parts = urlsplit(settings.storage_url)
    prefix = parts.path.strip("/")
    prefix = f"{prefix}/" if prefix else ""
    if any(c in prefix for c in "*?"):  # SeaweedFS would read them as wildcards
        raise InputError(f"storage_url: prefix {shown(prefix)} has a wildcard ('*' or '?')")
    return parts.netloc, prefix


def _new_keys() -> tuple[str, str]:
    return "RN" + secrets.token_hex(9).upper(), secrets.token_urlsafe(30)


def _check_keys(keys: tuple[str, str]) -> tuple[str, str]:
    try:
        access, secret = keys
    except (TypeError, ValueError):
        raise InputError(f"keys: {shown(keys)} is not (access key, secret key)") from None
    if not isinstance(access, str) or not _ACCESS_KEY.fullmatch(access):
        raise InputError(f"access key: {shown(access)} is not 16 to 128 letters and digits")
    if not isinstance(secret, str) or not _SECRET_KEY.fullmatch(secret):
        raise InputError("secret key: not 16 to 128 letters, digits and _+/=-")
    return access, secret


def _access_keys(identity: dict) -> set[str]:
    return {c.get("accessKey") for c in identity.get("credentials") or []}


def _read(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return {"identities": []}
    except ValueError as e:
        raise StorageError(f"{path}: not SeaweedFS identities ({e})") from None
    if not isinstance(config, dict) or not isinstance(config.get("identities", []), list):
        raise StorageError(f"{path}: not SeaweedFS identities (no 'identities' list)")
    config.setdefault("identities", [])
    return config


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One change of the identity file at a time (the manager, `farm up`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent / ".s3.json.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _servers(settings: Settings, path: Path) -> list:
    """The live processes of the local farm that serve S3 from this identity file."""
    from renderfarm.localfarm.runfile import read_run_file

    run = read_run_file(settings.state_dir)
    wanted = {f"-s3.config={path}", f"-config={path}"}
    return [p for p in (run.processes if run else []) if wanted & set(p.argv) and p.alive()]


def _apply(settings: Settings, path: Path, name: str, keys: tuple[str, str] | None, *, live: bool,
           signal_first: bool) -> None:
    """Make the running servers reload the file until a request signed with `keys` shows the
    identity `live` (or refused); nothing to do when no server runs (the next one reads the file)."""
    servers = _servers(settings, path)
    if not servers:
        return
    if signal_first:
        for proc in servers:
            proc.signal(signal.SIGHUP)
    if keys is None:
        return
    start = last_signal = time.monotonic()
    while (_probe(settings, name, keys) in (200, 404)) != live:
        now = time.monotonic()
        if now - start > APPLY_TIMEOUT:
            state = "in force" if live else "revoked"
            raise StorageError(f"s3 identity node-{name}: not {state} on the running SeaweedFS after "
                               f"{APPLY_TIMEOUT:g} s (see its log under {settings.state_dir / 'logs'})",
                               transient=True)
        if now - last_signal > 1.0:  # a server that was starting may have missed the signal
            for proc in servers:
                proc.signal(signal.SIGHUP)
            last_signal = now
        time.sleep(0.02)


def _probe(settings: Settings, name: str, keys: tuple[str, str]) -> int | None:
    """The HTTP status of a HEAD, signed with `keys`, of a key under the node's own prefix: 404
    when the identity is in force, 403 when it is refused; None when the server does not answer."""
    import urllib.error
    import urllib.request

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    bucket, prefix = _local_bucket(settings)
    url = f"{settings.s3_endpoint_url.rstrip('/')}/{quote(bucket)}/{quote(prefix + node_prefix(name) + PROBE_KEY)}"
    request = AWSRequest(method="HEAD", url=url, headers={})
    S3SigV4Auth(Credentials(*keys), "s3", settings.s3_region).add_auth(request)
    headers = dict(request.prepare().headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the farm's own server
    try:
        with opener.open(urllib.request.Request(url, method="HEAD", headers=headers), timeout=5) as reply:
            return reply.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None
