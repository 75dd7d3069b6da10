"""What the local farm's SeaweedFS refused render nodes, read from its log as dead letters naming
the node: the S3 side of what `AclWatch` does for Valkey.

The weed that serves S3 logs JSON lines at level 2 (services.WEED_S3_LOGGING). Seen on weed 4.48:
- every request ends with a `stats.go` line naming the identity, method, path and status:
  `"node-mallory" GET "/farm/jobs/j1/frames/f0001.png" 403 137µs` (the path quoted as Go's %q);
- a request signed with an access key the server does not know (a revoked node's: revocation
  leaves a tombstone without credentials) logs a WARNING with the whole key,
  `InvalidAccessKeyId: attempted key 'RN...' not found`, then its `stats.go` line with identity
  `-`: the key names the node (the database keeps it after revocation);
- a wrong signature logs only the masked key below level 4: not attributable, not recorded.
Levels 3 and 4 add the action refused (`identity node-x is not allowed to perform action Read on
...`) but many lines per request: the reason is told from the status and identity instead.

The log is read from where the last read stopped (its file, offset and unpaired warnings kept in
Valkey, written in the same transaction as the dead letters): a restarted manager counts nothing
twice, a new log is read from its start, and a log cut short by a rotation (logrotate) has the
rest of its rotated copy read first, so a refusal logged just before the rotation still counts."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from renderfarm import keys
from renderfarm.localfarm.identities import NODE_IDENTITY_PREFIX, PROBE_KEY
from renderfarm.localfarm.logrotate import rotated
from renderfarm.nodes import NODE_NAME

if TYPE_CHECKING:
    from redis import Redis

    from renderfarm.config import Settings
    from renderfarm.manager.nodebook import NodeBook
    from renderfarm.wire import DeadLetter

READ_AT_MOST = 4 << 20  # bytes of log read in one round: a long backlog is read over several
PENDING_KEPT = 16  # unknown-key warnings waiting for their request's line, at most

_REQUEST = re.compile(r'"(?P<who>[^"\\]*)" (?P<method>[A-Z]+) "(?P<path>(?:[^"\\]|\\.)*)" (?P<status>\d{3}) ')
_UNKNOWN_KEY = re.compile(r"InvalidAccessKeyId: attempted key '(?P<key>[A-Za-z0-9]{1,128})' not found")
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)")
_SIMPLE = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}


@dataclass(frozen=True)
class Request:
    """A request the S3 server answered: who (its identity, `-` when none), what, the status."""

    who: str
    method: str
    path: str  # /bucket/key
    status: int


@dataclass(frozen=True)
class UnknownKey:
    """A request signed with an access key the server does not know."""

    access_key: str


def parse_line(line: bytes) -> Request | UnknownKey | None:
    """One line of weed's JSON log: a request's outcome, an unknown access key, or None."""
    if b"stats.go" not in line and b"attempted key" not in line:  # most lines: no JSON parsed
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("msg"), str):
        return None
    # The file is weed's own; the message may quote what a client sent.
    if record.get("file") == "stats.go" and record.get("level") == "INFO":
        m = _REQUEST.match(record["msg"])
        if m:
            return Request(m["who"], m["method"], _unquote(m["path"]), int(m["status"]))
    elif record.get("file") == "auth_signature_v4.go" and record.get("level") == "WARNING":
        m = _UNKNOWN_KEY.match(record["msg"])
        if m:
            return UnknownKey(m["key"])
    return None


def _unquote(text: str) -> str:
    """The text of a Go %q string's inside."""

    def one(m: re.Match) -> str:
        code = m[1]
        if code[0] in "xuU" and len(code) > 1:
            return chr(int(code[1:], 16))
        return _SIMPLE.get(code, code)

    return _ESCAPE.sub(one, text)


@dataclass(frozen=True)
class Refusal:
    """A request of a node that SeaweedFS refused."""

    node: str
    method: str
    key: str
    why: str


def refusal(request: Request, pending: list[str], node_of_key: Callable[[str], str | None]) -> Refusal | None:
    """The node a refused request came from, or None (not refused, not a node's, the farm's own
    probe). A request without identity takes the oldest unknown access key waiting in `pending`."""
    if request.status != 403:
        return None
    bucket, _, key = request.path.lstrip("/").partition("/")
    if request.who.startswith(NODE_IDENTITY_PREFIX):
        node = request.who.removeprefix(NODE_IDENTITY_PREFIX)
        why = f"access denied: its identity may use only keys under nodes/{node}/ (a copy's source included)"
    elif request.who == "-" and pending:
        access_key = pending.pop(0)
        node = node_of_key(access_key)
        why = f"access key {access_key[:4]}... is no longer valid (the node was revoked or enrolled again)"
    else:
        return None
    # The farm checks a grant or a revocation with a HEAD of this key (identities._probe).
    if node is None or not NODE_NAME.fullmatch(node) or (request.method == "HEAD" and key.endswith(f"nodes/{node}/{PROBE_KEY}")):
        return None
    return Refusal(node, request.method, key or bucket, why)


def s3_logs(settings: Settings) -> list[Path]:
    """The log files of the local farm's processes that serve S3 (from its run file)."""
    from renderfarm.localfarm.runfile import read_run_file
    from renderfarm.localfarm.services import s3_config_path

    run = read_run_file(settings.state_dir)
    config = s3_config_path(settings.state_dir / "s3")
    wanted = {f"-s3.config={config}", f"-config={config}"}
    return [Path(p.log) for p in (run.processes if run else []) if wanted & set(p.argv)]


def _version(path: Path) -> str | None:
    """Which file a rotated copy is (written once, when the log rotates): None if there is none."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return f"{stat.st_dev}:{stat.st_ino}:{stat.st_mtime_ns}"


def _lines_from(path: Path, offset: int, *, whole: bool) -> bytes:
    """The whole lines of a log from `offset` on (at most READ_AT_MOST bytes; the rest is read
    next round). A line still being written is left for later, unless `whole`: then the file is
    done with (a rotated copy) and its last bytes count too. One line longer than a round reads
    is taken whole as it is."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read(READ_AT_MOST)
    except OSError:
        return b""
    if whole or len(chunk) == READ_AT_MOST and b"\n" not in chunk:
        return chunk
    return chunk[:chunk.rfind(b"\n") + 1]


class S3Watch:
    """Reads what the S3 servers logged since the last round and records each refusal of a node
    as a dead letter naming it (counted against it in the node book)."""

    def __init__(self, settings: Settings, logs: Callable[[], list[Path]] | None = None) -> None:
        self.settings = settings
        self._logs = logs
        self._seen: dict[str, dict] | None = None  # log path -> {"file", "offset", "pending"}

    def logs(self) -> list[Path]:
        if self._logs is None:
            from renderfarm.localfarm.identities import serves_storage

            self._logs = (lambda: s3_logs(self.settings)) if serves_storage(self.settings) else list
        return self._logs()

    def record(self, r: Redis, book: NodeBook, now: float, node_keys: Callable[[], dict[str, str]]) -> list[DeadLetter]:
        """Record the refusals logged since the last call; `node_keys` gives every node's access key
        (revoked ones included) -> its name, asked only when an unknown key was logged."""
        logs = self.logs()
        if not logs:
            return []
        if self._seen is None:
            self._seen = {k.decode(): json.loads(v) for k, v in r.hgetall(keys.S3_SEEN).items()}
        known: dict[str, str] | None = None

        def node_of_key(access_key: str) -> str | None:
            nonlocal known
            if known is None:
                known = node_keys()
            return known.get(access_key)

        letters: list[DeadLetter] = []
        for path in logs:
            letters += self._read(r, book, path, now, node_of_key)
        return letters

    def _read(self, r: Redis, book: NodeBook, path: Path, now: float,
              node_of_key: Callable[[str], str | None]) -> list[DeadLetter]:
        try:
            stat = os.stat(path)
        except OSError:
            return []
        file = f"{stat.st_dev}:{stat.st_ino}"
        older = rotated(path, 1)
        older_id = _version(older)
        seen = self._seen.get(str(path))
        scans: list[tuple[Path, int, bytes]] = []  # (file, offset, whole lines) to read this round
        if seen is not None and seen["file"] == file and (
                stat.st_size < seen["offset"] or "older" in seen and older_id != seen["older"]):
            # Cut back by a rotation (renderfarm.localfarm.logrotate), told by a new NAME.log.1 (the
            # log may have grown past the offset again since): what was written since the last
            # round was copied there first. Its rest is read before the new lines.
            tail = _lines_from(older, seen["offset"], whole=True) if older_id is not None else b""
            if tail:
                scans.append((older, seen["offset"], tail))
            seen = {**seen, "offset": 0}
        elif seen is None or seen["file"] != file:
            seen = {"file": file, "offset": 0, "pending": []}  # a new log: from its start
        pending = list(seen["pending"])
        chunk = _lines_from(path, seen["offset"], whole=False) if stat.st_size > seen["offset"] else b""
        if chunk:
            scans.append((path, seen["offset"], chunk))
        if not scans:
            if seen.get("older", older_id) != older_id or "older" not in seen:
                seen = {**seen, "older": older_id}
                r.hset(keys.S3_SEEN, str(path), json.dumps(seen))
                self._seen[str(path)] = seen
            return []
        found: dict[Refusal, tuple[Path, int, bytes]] = {}  # the first line of each, for the letter
        counts: Counter[Refusal] = Counter()
        for source, at, lines in scans:
            for line in lines.splitlines(keepends=True):
                if b'" 403 ' not in line and b"attempted key" not in line:  # a request served, as most are
                    at += len(line)
                    continue
                parsed = parse_line(line)
                if isinstance(parsed, UnknownKey):
                    pending = [*pending, parsed.access_key][-PENDING_KEPT:]
                elif isinstance(parsed, Request):
                    refused = refusal(parsed, pending, node_of_key)
                    if refused is not None:
                        found.setdefault(refused, (source, at, line))
                        counts[refused] += 1
                at += len(line)
        letters = [self._letter(refused, source, at, line, counts[refused], now)
                   for refused, (source, at, line) in found.items()]
        seen = {"file": file, "offset": seen["offset"] + len(chunk), "pending": pending, "older": older_id}
        from renderfarm.streams import DEAD_LETTERS_KEPT

        pipe = r.pipeline(transaction=True)  # the letters and how far they go, together
        for letter in letters:
            pipe.xadd(keys.DEAD_LETTERS, {"d": letter.to_json()}, maxlen=DEAD_LETTERS_KEPT, approximate=True)
        pipe.hset(keys.S3_SEEN, str(path), json.dumps(seen))
        pipe.execute()
        self._seen[str(path)] = seen
        for refused, count in counts.items():
            book.refused[refused.node] += count
        return letters

    @staticmethod
    def _letter(refused: Refusal, path: Path, at: int, line: bytes, count: int, now: float) -> DeadLetter:
        from renderfarm.wire import DeadLetter

        return DeadLetter(
            source="s3", entry=f"{path.name}@{at}"[:200], worker=refused.node, at=now, deliveries=count,
            reason=f"refused by SeaweedFS: {refused.node} {refused.method} {refused.key}: {refused.why}",
            raw=DeadLetter.excerpt(line.strip()))
