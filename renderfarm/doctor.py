"""`farm doctor`'s checks: whether each part the configuration names works, and how to fix it if not.

Every check is bounded in time: servers get CONNECT_TIMEOUT seconds per request and no retries,
and a check still running after CHECK_DEADLINE is reported as hanging rather than waited for.
Secrets (passwords in URLs, S3 keys) never reach a check's text: URLs are masked and any secret
still found in a server's own error message is replaced by ***.
"""

from __future__ import annotations

import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from renderfarm.config import load_settings, mask_url, read_local_file
from renderfarm.errors import ConfigError, RenderFarmError, StorageError
from renderfarm.localfarm.health import check_local_farm
from renderfarm.urls import url_secrets

if TYPE_CHECKING:
    from renderfarm.config import Settings
    from renderfarm.storage import Storage

CONNECT_TIMEOUT = 3.0  # seconds a server gets to connect and to answer each request
CHECK_DEADLINE = 15.0  # seconds a whole check may take before it is reported as hanging
# The probe object lies at the storage root, in no folder: S3 servers that keep folders (SeaweedFS)
# would keep an empty doctor/ after the probe is deleted.
PROBE_PREFIX = ".farm-doctor-probe-"
MIN_REDIS = (6, 2)  # RQ's reliable dequeue needs LMOVE (FACTS.md)

START_LOCAL_FARM = "start the local farm: `farm up -d`"


class CheckStatus(str, Enum):
    OK = "ok"
    WARN = "warn"  # works, but something is at risk (no persistence, an optional renderer missing)
    FAIL = "fail"  # the farm cannot use this part


@dataclass(frozen=True)
class Check:
    """The verdict on one part: what was found, and for a warning or failure, how to fix it."""

    part: str
    status: CheckStatus
    detail: str
    fix: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {**asdict(self), "status": self.status.value}


def diagnose(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> list[Check]:
    """Every check, for the configuration of this process (or of `environ` and `cwd`)."""
    env = dict(os.environ if environ is None else environ)
    try:
        settings = load_settings(env, cwd)
    except ConfigError as e:
        return [Check("config", CheckStatus.FAIL, str(e), "correct that setting in the environment or farm.toml")]
    return run_checks(settings, env)


def run_checks(settings: Settings, environ: Mapping[str, str]) -> list[Check]:
    """Redis, the database, storage and renderers, in that order, secrets scrubbed."""
    checks: list[Check] = []
    checks += _bounded("redis", lambda: check_redis(settings))
    checks += _bounded("database", lambda: check_database(settings))
    checks += _bounded("storage", lambda: check_storage(settings))
    checks += _bounded("webhooks", lambda: check_webhooks(settings))
    checks += check_renderers(settings)
    checks += _bounded("renderer blender", lambda: [check_blender(environ)])
    checks += check_local_farm(settings)  # its processes and restart counts
    return scrubbed(checks, _secrets(settings, environ))


def _bounded(part: str, check: Callable[[], list[Check]]) -> list[Check]:
    """Run `check` in a daemon thread and wait at most CHECK_DEADLINE for it: a filesystem or a
    library that ignores its timeouts must not hang the doctor. A RenderFarmError is a failure
    of the part; any other exception is a bug of ours and is raised again here."""
    results: list[list[Check]] = []
    errors: list[Exception] = []

    def run() -> None:
        try:
            results.append(check())
        except Exception as e:  # noqa: BLE001 - handed to the calling thread below
            errors.append(e)

    thread = threading.Thread(target=run, name=f"doctor {part}", daemon=True)
    thread.start()
    thread.join(CHECK_DEADLINE)
    if thread.is_alive():
        return [Check(part, CheckStatus.FAIL, f"no answer within {CHECK_DEADLINE:g} s",
                      "check that the server or filesystem it names is up and reachable from here")]
    if errors:
        if isinstance(errors[0], RenderFarmError):
            return [Check(part, CheckStatus.FAIL, str(errors[0]), "correct the setting it names")]
        raise errors[0]
    return results[0]


def check_redis(settings: Settings) -> list[Check]:
    """Redis answers (URL, password, TLS as configured), is recent enough, and persists its data."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    if not settings.redis_url:
        return [Check("redis", CheckStatus.FAIL, "no Redis configured", f"{START_LOCAL_FARM}, or set FARM_REDIS_URL")]
    where = mask_url(settings.redis_url)
    tls = {"ssl_ca_certs": settings.redis_ca} if settings.redis_url.startswith("rediss://") and settings.redis_ca else {}
    try:
        client = redis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=CONNECT_TIMEOUT,
            retry=Retry(NoBackoff(), 0), **tls,
        )
    except ValueError as e:  # a port or database number that is not a number
        return [_malformed(settings, "redis_url", e)]
    try:
        with client:
            server = client.info("server")
            persistence = client.info("persistence")
            try:
                saves: str | None = client.config_get("save").get("save", "")
            except redis.ResponseError:  # CONFIG renamed or refused, as managed services do
                saves = None
            dead = dead_letter_verdict(client)
    except redis.AuthenticationError as e:
        return [Check("redis", CheckStatus.FAIL, f"{where} refused the password ({_first_line(e)})",
                      "put the server's password in FARM_REDIS_URL: redis://:PASSWORD@host:port/0")]
    except redis.RedisError as e:
        return [Check("redis", CheckStatus.FAIL, f"{where} does not answer ({_first_line(e)})", _redis_fix(settings, e))]
    return [version_verdict(server, where), persistence_verdict(persistence, saves), dead]


def dead_letter_verdict(client) -> Check:
    """How many entries the manager put aside as dead letters (a bad entry never blocks the farm,
    but someone sent it: a bug, a stale node or an attack)."""
    from renderfarm import keys

    count = int(client.xlen(keys.DEAD_LETTERS))
    if not count:
        return Check("dead letters", CheckStatus.OK, "none")
    newest = client.xrevrange(keys.DEAD_LETTERS, count=1)
    why = ""
    if newest:
        import json

        try:
            why = "; newest: " + str(json.loads(newest[0][1].get(b"d") or b"{}").get("reason", ""))[:120]
        except (ValueError, AttributeError):
            why = ""
    return Check("dead letters", CheckStatus.WARN, f"{count} entr{'y' if count == 1 else 'ies'} put aside{why}",
                 "see why with `farm dead-letters`")


def _redis_fix(settings: Settings, e: Exception) -> str:
    if settings.redis_url.startswith("rediss://") and "certificate" in str(e).lower():
        return "set FARM_REDIS_CA to the CA bundle that signed the server's certificate"
    if not settings.configured_elsewhere("redis_url"):
        return START_LOCAL_FARM
    parts = urlsplit(settings.redis_url)
    place = parts.path if parts.scheme == "unix" else f"{parts.hostname}:{parts.port or 6379}"
    source = settings.sources.get("redis_url", "default")
    return f"start the Redis or Valkey server at {place}, or point redis_url (now from {source}) at one that runs"


def version_verdict(server: dict, where: str) -> Check:
    name, version = ("Valkey", server["valkey_version"]) if "valkey_version" in server else ("Redis", server.get("redis_version", "?"))
    # Valkey reports the Redis version it is compatible with as redis_version.
    compatible = tuple(int(n) for n in re.findall(r"\d+", str(server.get("redis_version", "0")))[:2])
    if compatible < MIN_REDIS:
        needed = ".".join(map(str, MIN_REDIS))
        return Check("redis", CheckStatus.FAIL, f"{name} {version} at {where}: the farm needs Redis {needed} or later",
                     f"upgrade the server to Redis {needed}+ or Valkey 7+")
    return Check("redis", CheckStatus.OK, f"{name} {version} at {where}")


def persistence_verdict(info: dict, saves: str | None) -> Check:
    part = "redis persistence"
    if info.get("aof_enabled") in (1, "1"):
        return Check(part, CheckStatus.OK, "append-only file (AOF) on")
    if saves:
        return Check(part, CheckStatus.OK, f"RDB snapshots (save {saves}); AOF off")
    fix = "enable AOF: appendonly yes in the server's configuration (or CONFIG SET appendonly yes now)"
    if saves is None:
        return Check(part, CheckStatus.WARN, "AOF off, and CONFIG GET save was refused: RDB snapshots unknown", fix)
    return Check(part, CheckStatus.WARN, "neither AOF nor RDB snapshots: a restart loses queued work and intents", fix)


def check_database(settings: Settings) -> list[Check]:
    """The database answers and its schema is at the revision this code expects."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.pool import NullPool

    from renderfarm.db import current_revision, head_revision

    try:
        url = make_url(settings.database_url)
        url.port  # noqa: B018  (parsed lazily: a port that is no number fails here, not later)
    except (SQLAlchemyError, ValueError) as e:
        return [_malformed(settings, "database_url", e)]
    if url.get_backend_name() == "sqlite":
        path = url.database or ":memory:"
        if path != ":memory:" and not Path(path).is_file():
            return [Check("database", CheckStatus.FAIL, f"SQLite database {path} does not exist",
                          "create it: `farm db upgrade` (or start the farm: `farm up -d`)")]
        name = f"SQLite {path}"
        engine = create_engine(url, connect_args={"timeout": CONNECT_TIMEOUT}, poolclass=NullPool)
        unreachable = f"check that {path} is a SQLite database this user can read"
    else:
        if url.drivername == "postgresql":  # psycopg 3 is the driver we ship
            url = url.set(drivername="postgresql+psycopg")
        name = f"PostgreSQL {mask_url(settings.database_url)}"
        engine = create_engine(url, connect_args={"connect_timeout": int(CONNECT_TIMEOUT)}, poolclass=NullPool)
        unreachable = "start PostgreSQL there, or correct database_url (host, user, password, database)"
    try:
        current = current_revision(engine)
    except SQLAlchemyError as e:
        return [Check("database", CheckStatus.FAIL, f"{name} cannot be read ({_first_line(getattr(e, 'orig', None) or e)})", unreachable)]
    finally:
        engine.dispose()
    return [schema_verdict(name, current, head_revision(), _known_revisions())]


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    from renderfarm.db import MIGRATIONS

    return {script.revision for script in ScriptDirectory(str(MIGRATIONS)).walk_revisions()}


def schema_verdict(name: str, current: str | None, head: str, known: set[str]) -> Check:
    upgrade = "run `farm db upgrade`"
    if current == head:
        return Check("database", CheckStatus.OK, f"{name}, schema at revision {head} (current)")
    if current is None:
        return Check("database", CheckStatus.FAIL, f"{name} has no renderfarm schema (this farm needs revision {head})", upgrade)
    if current in known:
        return Check("database", CheckStatus.FAIL, f"{name} is at schema revision {current}; this farm needs {head}", upgrade)
    return Check("database", CheckStatus.FAIL,
                 f"{name} is at schema revision {current!r}, which this renderfarm does not know (a newer one wrote it)",
                 "upgrade renderfarm here to the version the manager runs")


def check_storage(settings: Settings) -> list[Check]:
    """The bucket or directory exists, and a probe object can be written, read and deleted."""
    if settings.storage_url.startswith("file://"):
        return [_check_file_storage(settings)]
    return [_check_s3_storage(settings)]


def _check_file_storage(settings: Settings) -> Check:
    from renderfarm.storage.files import FileStorage

    storage = FileStorage.from_url(settings.storage_url)
    root = storage.root
    if not root.is_dir():
        return Check("storage", CheckStatus.FAIL, f"{settings.storage_url}: directory {root} does not exist",
                     f"mount the shared filesystem at {root}, or create it: mkdir -p {shlex.quote(str(root))}")
    problem = _probe(storage)
    if problem:
        return Check("storage", CheckStatus.FAIL, problem, f"make {root} writable by this user (uid {os.getuid()})")
    return Check("storage", CheckStatus.OK, f"{settings.storage_url}: wrote, read and deleted a probe object")


def _check_s3_storage(settings: Settings) -> Check:
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    from renderfarm.storage.s3 import S3Storage

    parts = urlsplit(settings.storage_url)
    bucket, prefix = parts.netloc, parts.path.strip("/")
    endpoint = mask_url(settings.s3_endpoint_url)
    at = f" at {endpoint}" if endpoint else ""
    # The default storage is the local farm's bucket, whether or not that farm ever ran here.
    local = not (settings.configured_elsewhere("storage_url") or settings.configured_elsewhere("s3_endpoint_url"))
    client = _s3_client(settings)
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            create = START_LOCAL_FARM + " (it creates the bucket)" if local else (
                f"create it: `aws s3 mb s3://{bucket}" + (f" --endpoint-url {endpoint}" if endpoint else "") + "`")
            return Check("storage", CheckStatus.FAIL, f"bucket {bucket!r} does not exist{at}", create)
        if code in ("403", "AccessDenied", "Forbidden"):
            return Check("storage", CheckStatus.FAIL, f"bucket {bucket!r}{at}: access denied",
                         "use AWS credentials allowed to list, read, write and delete in the bucket "
                         "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)")
        return Check("storage", CheckStatus.FAIL, f"bucket {bucket!r}{at}: {code or 'error'} ({_first_line(e)})",
                     "check the bucket and s3_endpoint_url")
    except NoCredentialsError:
        fix = START_LOCAL_FARM if local else "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
        return Check("storage", CheckStatus.FAIL, f"no AWS credentials found for s3://{bucket}{at}", fix)
    except BotoCoreError as e:
        fix = START_LOCAL_FARM if local else "start the S3 server, or correct s3_endpoint_url (FARM_S3_ENDPOINT_URL)"
        return Check("storage", CheckStatus.FAIL, f"S3{at} does not answer ({_first_line(e)})", fix)
    storage = S3Storage(settings.storage_url, bucket, f"{prefix}/" if prefix else "", client)
    problem = _probe(storage)
    if problem:
        return Check("storage", CheckStatus.FAIL, problem,
                     f"allow these credentials to put, get and delete objects in s3://{bucket}/{prefix}")
    return Check("storage", CheckStatus.OK, f"{settings.storage_url}{at}: wrote, read and deleted a probe object")


def _s3_client(settings: Settings):
    """A client of its own: short timeouts and no retries, where the farm's retries for minutes."""
    import boto3
    from botocore.config import Config

    from renderfarm.storage.s3 import local_credentials

    config = Config(
        retries={"total_max_attempts": 1},
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=CONNECT_TIMEOUT,
        request_checksum_calculation=settings.s3_checksums,
        response_checksum_validation=settings.s3_checksums,
        s3={"addressing_style": "path"} if settings.s3_endpoint_url else {},
    )
    credentials = local_credentials(settings)
    keys = {"aws_access_key_id": credentials[0], "aws_secret_access_key": credentials[1]} if credentials else {}
    return boto3.session.Session().client(
        "s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region, config=config, **keys
    )


def _probe(storage: Storage) -> str | None:
    """Put, get and delete a small object: None when all three work, else what failed."""
    key = f"{PROBE_PREFIX}{secrets.token_hex(6)}"
    data = f"renderfarm doctor {key}\n".encode()
    try:
        storage.put_bytes(key, data)
        read = storage.get_bytes(key)
        storage.delete([key])
    except StorageError as e:
        return str(e)
    if read != data:
        return f"{storage.url}: {key} read back {len(read)} bytes that differ from the {len(data)} written"
    return None


def check_webhooks(settings: Settings) -> list[Check]:
    """Where notifications go, whether they are signed, and the last tries that failed."""
    from sqlalchemy.exc import SQLAlchemyError

    from renderfarm.db import session_scope
    from renderfarm.outbox import last_failures
    from renderfarm.status import reader_engine

    failures: list[dict] = []
    engine = reader_engine(settings)
    if engine is not None:
        try:
            with session_scope(engine) as session:
                failures = last_failures(session)
        except SQLAlchemyError:  # no tables yet, or an older schema: the database check says so
            failures = []
        finally:
            engine.dispose()
    if settings.webhook_url is None:
        where = "no FARM_WEBHOOK_URL (jobs submitted with --notify URL still notify theirs)"
    else:
        where = f"{mask_url(settings.webhook_url)}, " + ("signed" if settings.webhook_secret else "unsigned")
    if failures:
        last = failures[0]
        given_up = "given up" if last["state"] == "failed" else "will try again"
        detail = (f"{where}; {len(failures)} recent failure(s), last: {last['event_id']} to {last['url']}: "
                  f"{last['last_error']} ({last['tries']} tries, {given_up})")
        return [Check("webhooks", CheckStatus.WARN, detail,
                      "make the URL answer 2xx; `farm status JOB --json` lists each job's notifications")]
    if settings.webhook_url is not None and not settings.webhook_secret:
        return [Check("webhooks", CheckStatus.WARN, where,
                      "set FARM_WEBHOOK_SECRET so receivers can check X-Farm-Signature")]
    return [Check("webhooks", CheckStatus.OK, where)]


def check_renderers(settings: Settings) -> list[Check]:
    """The renderers that ship with the farm: builtin and null run on this Python; command is a setting."""
    from importlib.metadata import PackageNotFoundError, version

    python = f"Python {platform.python_version()}"
    try:
        builtin = Check("renderer builtin", CheckStatus.OK, f"{python}, numpy {version('numpy')}, Pillow {version('pillow')}")
    except PackageNotFoundError as e:
        builtin = Check("renderer builtin", CheckStatus.FAIL, f"{python} without {e.name}",
                        "reinstall renderfarm with its dependencies (uv sync, or pip install renderfarm)")
    source = settings.sources.get("allow_commands", "default")
    if settings.allow_commands:
        command = Check("renderer command", CheckStatus.OK, f"enabled (allow_commands from {source}): jobs may run programs here")
    else:
        command = Check("renderer command", CheckStatus.OK, "disabled: FARM_ALLOW_COMMANDS=1 lets a worker run the programs jobs name")
    return [builtin, Check("renderer null", CheckStatus.OK, python), command]


def check_blender(environ: Mapping[str, str]) -> Check:
    """Blender from FARM_BLENDER or PATH, and its version. Not found is a warning (the farm renders
    without it); a FARM_BLENDER that does not run is a failure (the configuration names it)."""
    from renderfarm.renderers.blender import INSTALL_HINT as INSTALL_BLENDER
    from renderfarm.renderers.blender import VERSION_TIMEOUT, blender_version, locate_blender, run_version

    part = "renderer blender"
    path, source = locate_blender(environ)
    if path is None:
        status = CheckStatus.FAIL if environ.get("FARM_BLENDER") else CheckStatus.WARN
        return Check(part, status, source, INSTALL_BLENDER)
    code, output = run_version(path)
    if code is None:
        return Check(part, CheckStatus.FAIL, f"`{path} --version` did not finish within {VERSION_TIMEOUT:g} s", INSTALL_BLENDER)
    found_version = blender_version(output)
    if code != 0 or found_version is None:
        said = _first_line(output) if output.strip() else "nothing"
        return Check(part, CheckStatus.FAIL,
                     f"`{path} --version` exited {code} without a Blender version (said: {said})", INSTALL_BLENDER)
    return Check(part, CheckStatus.OK, f"Blender {found_version} at {path} (from {source})")


def scrubbed(checks: list[Check], hidden: set[str]) -> list[Check]:
    """The checks with every secret in `hidden` replaced by *** (a server may echo one in an error)."""
    def scrub(text: str | None) -> str | None:
        for secret in sorted(hidden, key=len, reverse=True):
            text = text.replace(secret, "***") if text else text
        return text

    return [Check(c.part, c.status, scrub(c.detail) or "", scrub(c.fix)) for c in checks]


def _secrets(settings: Settings, environ: Mapping[str, str]) -> set[str]:
    found = {environ.get("AWS_SECRET_ACCESS_KEY", ""), environ.get("AWS_SESSION_TOKEN", "")}
    found.add(settings.webhook_secret or "")
    for url in (settings.redis_url, settings.database_url, settings.s3_endpoint_url, settings.webhook_url):
        found |= url_secrets(url)  # ?password= ones too
    local = read_local_file(settings.state_dir)
    found |= {str(local.get("valkey_password", "")), str(local.get("s3_secret_key", ""))}
    return {s for s in found if len(s) >= 4}  # a one-letter "secret" would blot out the text


def _malformed(settings: Settings, name: str, e: Exception) -> Check:
    part = name.removesuffix("_url")
    shown = mask_url(getattr(settings, name))
    source = settings.sources.get(name, "default")
    return Check(part, CheckStatus.FAIL, f"{name} {shown!r} cannot be used ({_first_line(e)})", f"correct {name} (from {source})")


def _first_line(e: object) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:200]
