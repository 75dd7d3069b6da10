"""Enrolling render nodes from an admin's side: asking the manager to enroll or revoke a node, and
the node's credentials file (0600) that `farm-worker --credentials FILE` reads: its Valkey user,
its own key, its S3 identity and where the farm's servers are."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field

from renderfarm.errors import ConfigError
from renderfarm.wire.base import Message, NodeName, ShortSlug, Tag

if TYPE_CHECKING:
    from renderfarm.config import Settings
    from renderfarm.wire import NodeGrant

Secret = Annotated[str, Field(min_length=1, max_length=256)]


class NodeCredentials(Message):
    """Everything one node needs to act as itself, and nothing it may not."""

    what = "credentials"
    name: NodeName
    node_id: Annotated[str, Field(pattern=r"^n[0-9a-f]{8}$")]
    key: Secret  # seals its events and heartbeats, and opens its task orders
    redis_url: Annotated[str, Field(max_length=1024)]  # with the node's own Valkey user
    redis_ca: Annotated[str, Field(max_length=1024)] | None = None
    storage_url: Annotated[str, Field(max_length=1024)]
    s3_endpoint_url: Annotated[str, Field(max_length=1024)] | None = None
    s3_region: Annotated[str, Field(max_length=64)] = "us-east-1"
    s3_access_key: Secret | None = None  # its own S3 identity: writes only under nodes/NAME/
    s3_secret_key: Secret | None = None
    site: ShortSlug = "local"
    pool: ShortSlug = "default"
    tags: Annotated[tuple[Tag, ...], Field(max_length=32)] = ()

    def settings(self, settings: Settings) -> Settings:
        """`settings` pointed at the farm as this node reaches it, knowing the site it was enrolled
        at: `farm node add --site` checked it against the farm's farm.toml, which the node lacks."""
        from renderfarm.config import with_overrides
        from renderfarm.sites import DEFAULT_SITE, Site

        sites = settings.sites
        if self.site not in sites and self.site != DEFAULT_SITE:
            sites = {**sites, self.site: Site(self.site)}
        return with_overrides(settings, redis_url=self.redis_url, redis_ca=self.redis_ca,
                              storage_url=self.storage_url, s3_endpoint_url=self.s3_endpoint_url,
                              s3_region=self.s3_region, sites=sites)


def node_redis_url(farm_url: str, user: str, password: str, host: str | None = None) -> str:
    """The farm's Redis URL with a node's own user and password (and, for nodes elsewhere, the
    address they reach it at)."""
    parts = urlsplit(farm_url)
    where = host or parts.hostname or "127.0.0.1"
    if ":" in where:
        where = f"[{where}]"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{where}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path or "/0", parts.query, ""))


def credentials_for(settings: Settings, grant: NodeGrant, *, site: str, pool: str, tags: tuple[str, ...],
                    address: str | None = None, s3_keys: tuple[str, str] | None = None) -> NodeCredentials:
    """A node's credentials from what the manager granted it and where this farm's servers are
    (`address`: where nodes reach them, when not where this machine does). Where the manager
    grants no S3 identity (the storage is not the local farm's), `s3_keys` are the node's: an
    identity its admin made for it in that storage."""
    if grant.s3_access_key and grant.s3_secret_key:
        s3_keys = (grant.s3_access_key, grant.s3_secret_key)
    endpoint = settings.s3_endpoint_url
    if address and endpoint:
        parts = urlsplit(endpoint)
        endpoint = urlunsplit((parts.scheme, f"{address}:{parts.port}" if parts.port else address, parts.path, "", ""))
    return NodeCredentials(
        name=grant.name, node_id=grant.node_id, key=grant.key,
        redis_url=node_redis_url(settings.redis_url or "", grant.redis_user, grant.redis_password, address),
        redis_ca=settings.redis_ca, storage_url=settings.storage_url, s3_endpoint_url=endpoint,
        s3_region=settings.s3_region, s3_access_key=s3_keys[0] if s3_keys else None,
        s3_secret_key=s3_keys[1] if s3_keys else None,
        site=site, pool=pool, tags=tags,
    )


def write_credentials(path: Path, credentials: NodeCredentials) -> Path:
    """Write a node's credentials file: 0600 from its first byte, replaced whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(json.loads(credentials.to_json()), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_credentials(path: Path) -> NodeCredentials:
    """A node's credentials file, refused if others than its owner may read it."""
    try:
        mode = path.stat().st_mode
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"credentials: {path} cannot be read ({e.strerror or e})") from None
    if mode & 0o077:
        raise ConfigError(f"credentials: {path} may be read by others (mode {oct(mode & 0o777)}): chmod 600 it")
    return NodeCredentials.parse(raw)


def enroll(settings: Settings, name: str, *, site: str = "local", pool: str = "default",
           tags: tuple[str, ...] = (), address: str | None = None,
           s3_keys: tuple[str, str] | None = None) -> NodeCredentials:
    """Enroll a node (again, if it was: its old credentials stop working) and return its credentials."""
    from renderfarm.client import ask_manager, new_request_id
    from renderfarm.nodes import check_node_name
    from renderfarm.wire import NodeAddIntent

    check_node_name(name)
    reply = ask_manager(settings, NodeAddIntent(request_id=new_request_id(), name=name, site=site, pool=pool,
                                                tags=tuple(tags)))
    return credentials_for(settings, reply.node, site=site, pool=pool, tags=tuple(tags), address=address,
                           s3_keys=s3_keys)


def revoke(settings: Settings, name: str) -> bool:
    """Revoke a node; False if it was revoked already."""
    from renderfarm.client import ask_manager, new_request_id
    from renderfarm.nodes import check_node_name
    from renderfarm.wire import NodeRevokeIntent

    check_node_name(name)
    return bool(ask_manager(settings, NodeRevokeIntent(request_id=new_request_id(), name=name)).changed)
