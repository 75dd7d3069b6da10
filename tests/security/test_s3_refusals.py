"""The recorder of what SeaweedFS refused render nodes (renderfarm/localfarm/s3log.py), on lines
weed 4.48 wrote (tests/security/weed-4.48-s3.log, from `weed -v=2 -log_json mini` while a node
identity `node-mallory` confined to `farm/nodes/mallory/*` tried other keys): each refusal is one
dead letter naming the node, counted once, across manager restarts, on a real Valkey."""

from __future__ import annotations

import json
from pathlib import Path

import redis

from renderfarm import keys, streams
from renderfarm.config import load_settings
from renderfarm.localfarm.s3log import Request, S3Watch, UnknownKey, parse_line
from renderfarm.manager.nodebook import NodeBook

CAPTURED = Path(__file__).with_name("weed-4.48-s3.log")
REVOKED_KEY = "RNUNKNOWN01234567"  # the access key that weed no longer knew: here a revoked node's


def captured() -> list[bytes]:
    return CAPTURED.read_bytes().splitlines(keepends=True)


def test_weeds_lines_read_as_requests_and_unknown_keys():
    parsed = [p for p in map(parse_line, captured()) if p is not None]
    assert parsed == [
        Request("renderfarm", "PUT", "/farm/jobs/j1/frames/f0001.png", 200),
        Request("node-mallory", "PUT", "/farm/nodes/mallory/a.png", 200),
        Request("node-mallory", "GET", "/farm/jobs/j1/frames/f0001.png", 403),
        Request("node-mallory", "PUT", "/farm/jobs/j1/frames/f0001.png", 403),
        Request("node-mallory", "DELETE", "/farm/jobs/j1/frames/f0001.png", 403),
        Request("node-mallory", "PUT", "/farm/nodes/mallory/stolen", 403),  # a copy from jobs/
        UnknownKey(REVOKED_KEY),
        Request("-", "PUT", "/farm/nodes/mallory/b", 403),
        Request("-", "PUT", "/farm/nodes/mallory/b", 403),  # a wrong signature: no identity
        # A key written to forge a log line: JSON keeps it inside its own line, %q inside its path.
        Request("node-mallory", "PUT", '/farm/jobs/x" 403 1ms\nI1206 02:33:48.380179 stats.go:42 '
                '"node-victim" GET "/farm/jobs/j1/f" 403 1ms', 403),
        Request("node-mallory", "PUT", '/farm/nodes/mallory/x" 200\nI1206 stats.go:42 "node-victim" GET '
                '"/farm/q" 403 1ms', 200),
        Request("renderfarm", "GET", "/farm/jobs/j1/frames/f0001.png", 200),
        Request("node-mallory", "GET", "/farm", 403),  # a listing
        Request("node-mallory", "HEAD", "/farm/nodes/mallory/.identity-probe", 404),
    ]
    # What is not a whole JSON line is nothing, whatever it says.
    assert parse_line(b'I1206 02:33:48.380179 stats.go:42 "node-victim" GET "/farm/q" 403 1ms\n') is None
    assert parse_line(b'{"level":"INFO","file":"filer.go","msg":"\\"node-victim\\" GET \\"/q\\" 403 1ms"}') is None


def test_each_refusal_is_one_dead_letter_naming_the_node_once_across_restarts(redis_url: str, tmp_path: Path):
    r = redis.Redis.from_url(redis_url)
    settings = load_settings({"FARM_STATE_DIR": str(tmp_path)}, cwd=tmp_path)
    log = tmp_path / "seaweedfs.log"
    lines = captured()
    asked = []

    def node_keys() -> dict[str, str]:
        asked.append(1)
        return {REVOKED_KEY: "mole", "RNOTHER0000000000": "other"}

    def watch() -> S3Watch:  # a manager (re)started
        return S3Watch(settings, logs=lambda: [log])

    split = next(i for i, line in enumerate(lines) if b"attempted key" in line) + 1
    # The first round ends between the unknown key's warning and its request's line, and the
    # last line is still being written.
    log.write_bytes(b"".join(lines[:split]) + lines[split][:40])
    book = NodeBook()
    first = watch().record(r, book, 100.0, node_keys)
    assert [(x.worker, x.deliveries) for x in first] == [("mallory", 1)] * 4
    assert [x.reason.split(":")[1].strip() for x in first] == [
        "mallory GET jobs/j1/frames/f0001.png", "mallory PUT jobs/j1/frames/f0001.png",
        "mallory DELETE jobs/j1/frames/f0001.png", "mallory PUT nodes/mallory/stolen"]
    assert all(x.source == "s3" and "access denied" in x.reason for x in first)
    assert not asked  # the database is asked only when an unknown key comes

    # Restarted: what was counted is not counted again; the rest of the log is, once.
    with log.open("ab") as f:
        f.write(lines[split][40:] + b"".join(lines[split + 1:]))
    book = NodeBook()
    second = watch().record(r, book, 101.0, node_keys)
    assert [(x.worker, x.reason.split(": ")[1]) for x in second] == [
        ("mole", "mole PUT nodes/mallory/b"),  # the revoked key's request, paired with its warning
        ("mallory", ('mallory PUT jobs/x" 403 1ms\nI1206 02:33:48.380179 stats.go:42 "node-victim" GET '
                     '"/farm/jobs/j1/f" 403 1ms')),
        ("mallory", "mallory GET farm"),  # a listing of the bucket
    ]
    assert "no longer valid" in second[0].reason and REVOKED_KEY not in second[0].reason
    assert book.refused == {"mallory": 2, "mole": 1}  # never the node a forged line named
    assert asked == [1]
    assert watch().record(r, NodeBook(), 102.0, node_keys) == []

    # The same refusal again in one round: one letter, counted twice.
    with log.open("ab") as f:
        f.write(lines[split - 6] * 2)
    book = NodeBook()
    [again] = watch().record(r, book, 103.0, node_keys)
    assert (again.worker, again.deliveries, book.refused) == ("mallory", 2, {"mallory": 2})

    # A new log (rotated, or the farm's state made anew) is read from its start.
    log.unlink()
    log.write_bytes(lines[split - 6])
    assert [x.worker for x in watch().record(r, NodeBook(), 104.0, node_keys)] == ["mallory"]

    letters = [x for _, x in streams.dead_letters(r, count=100) if x.source == "s3"]
    assert len(letters) == 4 + 3 + 1 + 1
    assert sum(x.deliveries for x in letters) == 4 + 3 + 2 + 1
    seen = json.loads(r.hget(keys.S3_SEEN, str(log)))
    assert seen["offset"] == log.stat().st_size and seen["pending"] == []


def test_nothing_is_read_where_the_local_farm_is_not_the_storage(redis_url: str, tmp_path: Path):
    r = redis.Redis.from_url(redis_url)
    settings = load_settings({"FARM_STATE_DIR": str(tmp_path), "FARM_STORAGE_URL": f"file://{tmp_path}/store"},
                             cwd=tmp_path)
    assert S3Watch(settings).record(r, NodeBook(), 1.0, dict) == []
    assert not r.exists(keys.S3_SEEN)


def test_a_refusal_logged_just_before_the_log_rotates_still_counts(redis_url: str, tmp_path: Path):
    """The local farm rotates seaweedfs.log by copying it to .1 and cutting it back to empty: the
    lines written since the last round are read from the copy, then the new ones."""
    from renderfarm.localfarm.logrotate import rotate

    r = redis.Redis.from_url(redis_url)
    settings = load_settings({"FARM_STATE_DIR": str(tmp_path)}, cwd=tmp_path)
    log = tmp_path / "seaweedfs.log"
    get, put, delete = (line for line in captured() if b"node-mallory" in line and b" 403 " in line
                        and any(m in line for m in (b'" GET \\"/farm/jobs', b'" PUT \\"/farm/jobs/j1', b"DELETE")))
    watch = S3Watch(settings, logs=lambda: [log])
    log.write_bytes(get)
    assert [x.reason.split(": ")[1] for x in watch.record(r, NodeBook(), 1.0, dict)] == ["mallory GET jobs/j1/frames/f0001.png"]
    with log.open("ab") as f:
        f.write(put)  # logged after that round...
    assert rotate(log, max_bytes=0)  # ...and rotated before the next
    with log.open("ab") as f:
        f.write(delete)
    book = NodeBook()
    assert [x.reason.split(": ")[1] for x in watch.record(r, book, 2.0, dict)] == [
        "mallory PUT jobs/j1/frames/f0001.png", "mallory DELETE jobs/j1/frames/f0001.png"]
    assert book.refused == {"mallory": 2}
    assert watch.record(r, NodeBook(), 3.0, dict) == []

