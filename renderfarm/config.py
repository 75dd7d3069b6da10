"""Settings: where the farm's Redis, database and storage are, from the environment and farm.toml.

Precedence, highest first: environment (``FARM_*``), ``./farm.toml``, ``<state dir>/farm.toml``,
what the last `farm up` of the state directory ran with (``<state dir>/up.json``), the embedded
local farm's generated settings (``<state dir>/local.json``), built-in defaults.
"""

from __future__ import annotations

import json
import math
import os
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from urllib.parse import urlsplit

from renderfarm.errors import ConfigError
from renderfarm.sites import DEFAULT_SITE, Site, parse_sites
from renderfarm.urls import ENCODE_HINT, MASK, mask_url, misread_userinfo

DEFAULT_STATE_DIR = "~/.local/state/renderfarm"
LOCAL_FILE = "local.json"
TOML_FILE = "farm.toml"
LOCAL_BUCKET = "renderfarm"
RECORD_FILE = "up.json"
# What `farm up` records for every later command of its state directory, in any shell: where the
# farm's Redis, database and storage are.
RECORDED = ("redis_url", "redis_ca", "database_url", "storage_url", "s3_endpoint_url", "s3_region", "s3_checksums")
# Of those, the ones that make another farm when they differ.
WHERE = ("redis_url", "database_url", "storage_url", "s3_endpoint_url")


@dataclass(frozen=True)
class Settings:
    """The effective configuration of one process."""

    state_dir: Path
    redis_url: str | None = None
    redis_ca: str | None = None  # CA bundle to verify a rediss:// server with (default: the system's)
    database_url: str = ""
    storage_url: str = ""
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    # botocore >= 1.36 sends CRC checksums that some S3-compatible servers reject (FACTS.md).
    s3_checksums: str = "when_required"
    heartbeat_ttl: float = 30.0
    max_tasks: int = 100_000
    # Frames one task may hold (`--chunk`): a task's order and its done event list each frame.
    max_task_frames: int = 1_000
    max_attempts: int = 3
    task_timeout: float = 3600.0
    # How long a worker keeps retrying storage before it fails an attempt (links drop).
    storage_retry: float = 300.0
    # After a first SIGTERM, how long a worker lets its render finish before handing it back.
    shutdown_grace: float = 300.0
    # Whether this worker runs the `command` renderer (programs named by the job).
    allow_commands: bool = False
    # Whether this worker takes jobs that let a .blend's auto-run scripts run (`--allow-scripts`).
    allow_scripts: bool = False
    # Whether this worker runs OpenJD tasks (the programs a job template names).
    allow_openjd: bool = False
    # The custom OpenJD attributes this worker advertises for host requirements, e.g.
    # "attr.studio.dcc=maya,nuke attr.studio.site=lon" (FARM_OPENJD_ATTRIBUTES).
    openjd_attributes: str | None = None
    # The unprivileged user renders run as when the worker is root (FARM_RENDER_USER).
    render_user: str | None = None
    # The Blender this worker renders with (default: `blender` on PATH).
    blender: str | None = None
    # Threads each render may use (0: all cores); for Blender, its --threads.
    render_threads: int = 0
    # Seconds the CLI waits for the manager to answer a submission or a verb.
    submit_wait: float = 60.0
    # Caps on what one job may ask of the farm: checked on submit, and by each worker again.
    max_pixels: int = 16384 * 16384  # pixels in one frame (width x height)
    max_samples: int = 65536  # samples per pixel (Blender's --samples, a builtin scene's)
    max_scene_bytes: int = 10 * 2**20  # a TOML/JSON scene file
    max_scene_objects: int = 10_000  # objects and lights in a builtin scene
    max_unpacked_bytes: int = 20 * 2**30  # what a scene pack (a .blend and its files) unpacks to
    max_pack_entries: int = 100_000  # files in a scene pack
    # Webhooks (see renderfarm.webhooks): the farm's URL for every job's notifications, the key
    # that signs them, seconds one POST may take, and tries before one is given up.
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_timeout: float = 5.0
    webhook_tries: int = 8
    # How old an object under an attempt prefix must be before the manager's sweep may delete it
    # (when no attempt needs it: renderfarm.manager.sweep), in seconds.
    sweep_grace: float = 3600.0
    # Processes the manager checks attempts' outputs in (None: one per core beyond two, at most 4;
    # 0: threads of its own process): renderfarm.manager.verifier.
    verify_processes: int | None = None
    # The most a worker's scene cache (downloaded and unpacked scenes) keeps, in GB (10**9 bytes):
    # beyond it the least recently used scenes are evicted, never the one in use.
    scene_cache_gb: float = 20.0
    # Days after which the manager archives a finished job and deletes its attempts' data (0: never).
    retention_days: float = 0.0
    # Sleeping idle nodes (renderfarm.manager.sleeper): seconds a node must be idle before the
    # manager tells it to sleep (0: never); the command a node sleeps with; how the manager wakes
    # it (a magic packet to this address and port, or this command with {node} and {mac} put in);
    # how long a woken node may take to come back; the MAC a node asks to be woken at.
    sleep_after: float = 0.0
    sleep_command: str = "systemctl suspend"
    wake_command: str | None = None
    wake_address: str = "255.255.255.255"
    wake_port: int = 9
    wake_timeout: float = 300.0
    worker_mac: str | None = None
    # The sites workers may declare, from [sites.NAME] tables of farm.toml (see renderfarm.sites).
    sites: dict[str, Site] = field(default_factory=dict, compare=False, repr=False)
    # Where each value came from ("env FARM_REDIS_URL", "./farm.toml", "local farm", "default").
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def local_file(self) -> Path:
        return self.state_dir / LOCAL_FILE

    @property
    def database_file(self) -> Path:
        return self.state_dir / "farm.db"

    def site(self, name: str) -> Site:
        """A configured site, or the built-in `local` site (no price) when none are configured."""
        if name in self.sites:
            return self.sites[name]
        if name == DEFAULT_SITE and DEFAULT_SITE not in self.sites:
            return Site(DEFAULT_SITE)
        known = ", ".join(sorted(self.sites)) or "none configured"
        raise ConfigError(f"site: {name!r} is not a configured site ({known}; add [sites.{name}] to farm.toml)")

    def configured_elsewhere(self, name: str) -> bool:
        """True when `name` was set by the user rather than by the local farm or a default."""
        return self.sources.get(name, "default") not in ("default", "local farm")


_ENV = {
    "redis_url": "FARM_REDIS_URL",
    "redis_ca": "FARM_REDIS_CA",
    "database_url": "FARM_DATABASE_URL",
    "storage_url": "FARM_STORAGE_URL",
    "s3_endpoint_url": "FARM_S3_ENDPOINT_URL",
    "s3_region": "FARM_S3_REGION",
    "s3_checksums": "FARM_S3_CHECKSUMS",
    "heartbeat_ttl": "FARM_HEARTBEAT_TTL",
    "max_tasks": "FARM_MAX_TASKS",
    "max_task_frames": "FARM_MAX_TASK_FRAMES",
    "max_attempts": "FARM_MAX_ATTEMPTS",
    "task_timeout": "FARM_TASK_TIMEOUT",
    "storage_retry": "FARM_STORAGE_RETRY",
    "shutdown_grace": "FARM_SHUTDOWN_GRACE",
    "allow_commands": "FARM_ALLOW_COMMANDS",
    "allow_scripts": "FARM_ALLOW_SCRIPTS",
    "allow_openjd": "FARM_ALLOW_OPENJD",
    "openjd_attributes": "FARM_OPENJD_ATTRIBUTES",
    "render_user": "FARM_RENDER_USER",
    "blender": "FARM_BLENDER",
    "render_threads": "FARM_RENDER_THREADS",
    "submit_wait": "FARM_SUBMIT_WAIT",
    "max_pixels": "FARM_MAX_PIXELS",
    "max_samples": "FARM_MAX_SAMPLES",
    "max_scene_bytes": "FARM_MAX_SCENE_BYTES",
    "max_scene_objects": "FARM_MAX_SCENE_OBJECTS",
    "max_unpacked_bytes": "FARM_MAX_UNPACKED_BYTES",
    "max_pack_entries": "FARM_MAX_PACK_ENTRIES",
    "webhook_url": "FARM_WEBHOOK_URL",
    "webhook_secret": "FARM_WEBHOOK_SECRET",
    "webhook_timeout": "FARM_WEBHOOK_TIMEOUT",
    "webhook_tries": "FARM_WEBHOOK_TRIES",
    "sweep_grace": "FARM_SWEEP_GRACE",
    "verify_processes": "FARM_VERIFY_PROCESSES",
    "scene_cache_gb": "FARM_SCENE_CACHE_GB",
    "retention_days": "FARM_RETENTION_DAYS",
    "sleep_after": "FARM_SLEEP_AFTER",
    "sleep_command": "FARM_SLEEP_COMMAND",
    "wake_command": "FARM_WAKE_COMMAND",
    "wake_address": "FARM_WAKE_ADDRESS",
    "wake_port": "FARM_WAKE_PORT",
    "wake_timeout": "FARM_WAKE_TIMEOUT",
    "worker_mac": "FARM_WORKER_MAC",
}
_SETTABLE = set(_ENV)


def load_settings(environ: dict[str, str] | None = None, cwd: Path | None = None) -> Settings:
    """Resolve the settings of this process from the environment, farm.toml files and the local farm."""
    env = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    local_toml = _read_toml(cwd / TOML_FILE)
    if env.get("FARM_STATE_DIR"):
        state_raw, state_source = env["FARM_STATE_DIR"], "env FARM_STATE_DIR"
    elif local_toml.get("state_dir"):
        state_raw, state_source = local_toml["state_dir"], "./" + TOML_FILE
    else:
        state_raw, state_source = DEFAULT_STATE_DIR, "default"
    # A relative state directory is relative to `cwd`, like the ./farm.toml that may name it.
    state_dir = (cwd / os.path.expanduser(str(state_raw))).absolute()

    values: dict[str, object] = {
        "database_url": f"sqlite:///{state_dir / 'farm.db'}",
        "storage_url": f"s3://{LOCAL_BUCKET}/",
    }
    sources = {name: "default" for name in values}
    layers: list[tuple[str, dict]] = [
        ("local farm", _local_farm_layer(state_dir)),
        (f"{state_dir / RECORD_FILE} (farm up)", _recorded_layer(state_dir)),
        (str(state_dir / TOML_FILE), _read_toml(state_dir / TOML_FILE)),
        ("./" + TOML_FILE, local_toml),
    ]
    sites: dict[str, Site] = {}
    for source, layer in layers:
        for key, value in layer.items():
            if key == "state_dir":
                continue
            if key == "sites":
                sites.update(parse_sites(value, source))
                continue
            if key not in _SETTABLE:
                raise ConfigError(f"{source}: unknown setting {key!r}")
            values[key] = value
            sources[key] = source
    defaults = {f.name: f.default for f in fields(Settings)}
    for key, var in _ENV.items():
        # `eval "$(farm env)"` exports the local farm's own values (and the defaults): they stay
        # the local farm's (and defaults).
        current = values.get(key, defaults[key])
        if env.get(var) and (current is None or env[var] != _text(current)):
            values[key] = env[var]
            sources[key] = f"env {var}"
    # The local farm's S3 endpoint serves only the local farm's bucket.
    if sources.get("s3_endpoint_url") == "local farm" and sources["storage_url"] != "default":
        values.pop("s3_endpoint_url")
        sources.pop("s3_endpoint_url")
    settings = Settings(state_dir=state_dir, sites=sites, sources=sources, **_coerce(values, sources))
    sources["state_dir"] = state_source
    _check(settings)
    return settings


def _local_farm_layer(state_dir: Path) -> dict:
    """Settings the embedded local farm generated: its Redis and S3 endpoints, at the address its
    servers listen on (loopback unless `farm up --listen` named another, for workers elsewhere)."""
    local = read_local_file(state_dir)
    layer: dict[str, object] = {}
    host = url_host(str(local.get("listen") or "127.0.0.1"))
    if "valkey_port" in local and "valkey_password" in local:
        layer["redis_url"] = f"redis://:{local['valkey_password']}@{host}:{local['valkey_port']}/0"
    if "s3_port" in local:
        layer["s3_endpoint_url"] = f"http://{host}:{local['s3_port']}"
    return layer


def recorded_settings(settings: Settings) -> dict:
    """What `farm up` writes to up.json: the value of each recorded setting and where it came from."""
    return {
        "recorded_at": time.time(),
        "settings": {
            name: {"value": getattr(settings, name), "source": settings.sources.get(name, "default")}
            for name in RECORDED
        },
    }


def read_recorded(state_dir: Path) -> dict[str, dict]:
    """The settings the last `farm up` of this state directory ran with ({} if it never ran)."""
    path = state_dir / RECORD_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable ({e}); delete it and run `farm up` again") from None
    found = doc.get("settings") if isinstance(doc, dict) else None
    if not isinstance(found, dict):
        raise ConfigError(f"{path}: no 'settings' table; delete it and run `farm up` again")
    return {k: v for k, v in found.items() if k in RECORDED and isinstance(v, dict)}


def _recorded_layer(state_dir: Path) -> dict:
    """What `farm up` was told (not what the local farm generates, nor defaults): the values every
    command of this state directory uses unless its own environment or farm.toml says otherwise."""
    return {
        name: entry["value"] for name, entry in read_recorded(state_dir).items()
        if entry.get("value") is not None and entry.get("source") not in ("default", "local farm")
    }


def differing_settings(settings: Settings) -> list[tuple[str, str, str]]:
    """(setting, the last `farm up`'s value, this process's value) for each place (Redis,
    database, storage) where these settings point elsewhere than that farm; secrets masked."""
    recorded = read_recorded(settings.state_dir)
    out = []
    for name in WHERE:
        if name not in recorded:
            continue
        theirs, ours = recorded[name].get("value"), getattr(settings, name)
        if theirs != ours:
            out.append((name, str(mask_url(theirs) or "none"), str(mask_url(ours) or "none")))
    return out


def url_host(address: str) -> str:
    """An IP address as a URL's host: an IPv6 one in brackets."""
    return f"[{address}]" if ":" in address else address


def read_local_file(state_dir: Path) -> dict:
    """The local farm's generated settings (ports, passwords), or {} when it never ran here."""
    path = state_dir / LOCAL_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable ({e})") from None


def site_files(state_dir: Path, cwd: Path) -> tuple[Path, Path]:
    """The farm.toml files whose [sites] tables `load_settings` reads, in its order (a later one's
    site replaces an earlier one's of the same name)."""
    return state_dir / TOML_FILE, cwd / TOML_FILE


def read_sites(state_dir: Path, cwd: Path) -> dict[str, Site]:
    """The sites of farm.toml as `load_settings` reads them, for a process that reads them again
    while it runs (the manager: renderfarm.manager.sitewatch)."""
    sites: dict[str, Site] = {}
    state_file, local_file = site_files(state_dir, cwd)
    for source, path in ((str(state_file), state_file), ("./" + TOML_FILE, local_file)):
        table = _read_toml(path).get("sites")
        if table is not None:
            sites.update(parse_sites(table, source))
    return sites


def _read_toml(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: invalid TOML ({e})") from None
    # Accept both top-level keys and a [farm] table.
    farm = data.pop("farm", {})
    if not isinstance(farm, dict):
        raise ConfigError(f"{path}: [farm] must be a table")
    return {**data, **farm}


def _coerce(values: dict[str, object], sources: dict[str, str]) -> dict[str, object]:
    types = {f.name: f.type for f in fields(Settings)}
    out: dict[str, object] = {}
    for key, value in values.items():
        kind = types[key]
        if kind in ("float", "int"):
            out[key] = _number(key, value, kind, sources[key])
        elif kind == "int | None":
            out[key] = None if value in ("", None) else _number(key, value, "int", sources[key])
        elif kind == "bool":
            out[key] = _boolean(key, value, sources[key])
        else:
            out[key] = None if value in ("", None) else str(value)
    return out


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _boolean(key: str, value: object, source: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ConfigError(f"{key} (from {source}): expected true or false, got {value!r}")


def _number(key: str, value: object, kind: str, source: str) -> float | int:
    """A finite number (a whole one for an int setting); TOML's true/false are not numbers."""
    try:
        if isinstance(value, bool):
            raise ValueError
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)  # type: ignore[call-overload]
        number = float(value)  # type: ignore[arg-type]
        if not math.isfinite(number):
            raise ValueError
        return number
    except (TypeError, ValueError, OverflowError):
        wanted = "a whole number" if kind == "int" else "a number"
        raise ConfigError(f"{key} (from {source}): expected {wanted}, got {value!r}") from None


def _check(s: Settings) -> None:
    def bad(name: str, why: str) -> ConfigError:
        return ConfigError(f"{name} (from {s.sources.get(name, 'default')}): {why}")

    _check_urls(s, bad)
    if s.s3_checksums not in ("when_required", "when_supported"):
        raise bad("s3_checksums", f"{s.s3_checksums!r} is neither when_required nor when_supported")
    if s.heartbeat_ttl < 1:
        raise bad("heartbeat_ttl", f"{s.heartbeat_ttl:g} must be at least 1 second")
    if s.task_timeout <= 0:
        raise bad("task_timeout", f"{s.task_timeout:g} must be more than 0 seconds")
    if s.max_tasks < 1:
        raise bad("max_tasks", f"{s.max_tasks} must be at least 1")
    if not 1 <= s.max_task_frames <= 10_000:
        raise bad("max_task_frames", f"{s.max_task_frames} must be 1 to 10000")
    if not 0 < s.submit_wait <= 86400:
        raise bad("submit_wait", f"{s.submit_wait:g} must be more than 0 seconds and at most a day")
    if s.max_attempts < 1:
        raise bad("max_attempts", f"{s.max_attempts} must be at least 1")
    if not 0 <= s.render_threads <= 1024:
        raise bad("render_threads", f"{s.render_threads} must be 0 (all cores) to 1024")
    if s.webhook_url is not None:
        from renderfarm.errors import InputError
        from renderfarm.webhooks import check_webhook_url

        try:
            check_webhook_url(s.webhook_url, "webhook_url")
        except InputError as e:
            raise bad("webhook_url", str(e).removeprefix("webhook_url: ")) from None
    if not 0 < s.webhook_timeout <= 300:
        raise bad("webhook_timeout", f"{s.webhook_timeout:g} must be more than 0 seconds and at most 300")
    if s.verify_processes is not None and not 0 <= s.verify_processes <= 64:
        raise bad("verify_processes", f"{s.verify_processes} must be 0 to 64")
    if not 1 <= s.webhook_tries <= 100:
        raise bad("webhook_tries", f"{s.webhook_tries} must be 1 to 100")
    if s.sweep_grace < 60:
        raise bad("sweep_grace", f"{s.sweep_grace:g} must be at least 60 seconds")
    if not s.scene_cache_gb > 0:
        raise bad("scene_cache_gb", f"{s.scene_cache_gb:g} must be more than 0")
    if not 0 <= s.retention_days <= 36500:
        raise bad("retention_days", f"{s.retention_days:g} must be 0 (keep every job) to 36500 days")
    _check_sleep(s, bad)
    for cap in ("max_pixels", "max_samples", "max_scene_bytes", "max_scene_objects",
                "max_unpacked_bytes", "max_pack_entries"):
        if getattr(s, cap) < 1:
            raise bad(cap, f"{getattr(s, cap)} must be at least 1")


def _check_sleep(s: Settings, bad: Callable[[str, str], ConfigError]) -> None:
    from renderfarm.wake import normal_mac, wake_argv

    if s.sleep_after < 0:
        raise bad("sleep_after", f"{s.sleep_after:g} must be 0 (never) or more seconds")
    if not 1 <= s.wake_port <= 65535:
        raise bad("wake_port", f"{s.wake_port} must be 1 to 65535")
    if not s.wake_timeout > 0:
        raise bad("wake_timeout", f"{s.wake_timeout:g} must be more than 0 seconds")
    for name, check in (("worker_mac", lambda v: normal_mac(v, "worker_mac")),
                        ("wake_command", lambda v: wake_argv(v, "node", None)),
                        ("sleep_command", lambda v: wake_argv(v, "node", None))):
        value = getattr(s, name)
        if value is not None:
            try:
                check(value)
            except ConfigError as e:
                raise bad(name, str(e).split(": ", 1)[-1]) from None


def _check_urls(s: Settings, bad: Callable[[str, str], ConfigError]) -> None:
    """Each URL parses, names its port as a number, holds no password its clients would misread,
    and has a scheme the farm speaks."""
    for name in ("redis_url", "database_url", "storage_url", "s3_endpoint_url"):
        url = getattr(s, name) or ""
        try:
            # First: with a raw password, urllib takes part of it for the port, and quotes it.
            credentials = name != "storage_url" and not url.startswith("sqlite")
            why = misread_userinfo(url) if credentials else None
            if why:
                raise bad(name, f"{mask_url(url)!r} {why}: {ENCODE_HINT}")
            _ = urlsplit(url).port
        except ValueError as e:  # "Invalid IPv6 URL", "Port could not be cast to integer value..."
            raise bad(name, f"{mask_url(url)!r} is not a valid URL ({e})") from None
    if s.redis_url is not None and urlsplit(s.redis_url).scheme not in ("redis", "rediss", "unix"):
        raise bad("redis_url", f"{mask_url(s.redis_url)!r} is not a redis://, rediss:// or unix:// URL")
    if not urlsplit(s.database_url).scheme.startswith(("sqlite", "postgresql")):
        raise bad("database_url", f"{mask_url(s.database_url)!r} is neither sqlite:/// nor postgresql+psycopg://")
    store = urlsplit(s.storage_url)
    if store.scheme not in ("s3", "file") or (store.scheme == "s3" and not store.netloc):
        raise bad("storage_url", f"{mask_url(s.storage_url)!r} is neither s3://bucket/prefix nor file:///path")
    if s.s3_endpoint_url is not None:
        endpoint = urlsplit(s.s3_endpoint_url)
        if endpoint.scheme not in ("http", "https") or not endpoint.hostname:
            raise bad("s3_endpoint_url", f"{mask_url(s.s3_endpoint_url)!r} is not an http:// or https:// URL")


def effective_settings(settings: Settings) -> list[tuple[str, str, str]]:
    """(name, value with secrets masked, source) for `farm config`."""
    rows = [("state_dir", str(settings.state_dir), settings.sources.get("state_dir", "default"))]
    for f in fields(Settings):
        if f.name in ("state_dir", "sources", "sites"):
            continue
        value = getattr(settings, f.name)
        shown = mask_url(value) if isinstance(value, str) and "url" in f.name else value
        if "secret" in f.name and value:
            shown = MASK
        rows.append((f.name, "" if shown is None else str(shown), settings.sources.get(f.name, "default")))
    return rows


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as FARM_* environment variables, for child processes and `farm env`."""
    env = {"FARM_STATE_DIR": str(settings.state_dir)}
    for name, var in _ENV.items():
        value = getattr(settings, name)
        if value is not None:
            env[var] = _text(value)
    return env


def _text(value: object) -> str:
    """A setting as environment text that reads back to the same value (30.0 -> "30")."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def with_overrides(settings: Settings, **changes: object) -> Settings:
    """A copy of settings with some values replaced (used by tests and the local farm)."""
    return replace(settings, **changes)
