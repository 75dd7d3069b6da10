"""Object storage on both backends (S3 on the test SeaweedFS, file:// in a temporary directory):
every operation, key safety, the storage prefix, atomic file writes and the key layout."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import S3Server, s3_settings

from renderfarm.config import load_settings
from renderfarm.errors import StorageError
from renderfarm.storage import ObjectInfo, Storage, check_key, open_storage
from renderfarm.storage import files as files_backend
from renderfarm.storage import s3 as s3_backend
from renderfarm.storage.keys import attempt_prefix, frame_key, frames_prefix, job_prefix, scene_key

# Where the storage root sits inside its container (the bucket, or the test's directory), so
# both backends can be checked for objects landing exactly under it and nowhere else.
ROOT = "farm/root"


def raw_s3(server: S3Server):
    """A plain boto3 client on the test SeaweedFS, independent of the code under test."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


@dataclass
class Backend:
    name: str
    storage: Storage
    url: str
    # Every object the backend holds in its container, by full name ("farm/root/<key>").
    raw_names: Callable[[], list[str]]
    # Put an object in the container beside the root, the way another tool would.
    raw_put: Callable[[str, bytes], None]


@pytest.fixture(params=["s3", "file"])
def backend(request, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "s3":
        server: S3Server = request.getfixturevalue("seaweed")
        bucket = f"rf-{secrets.token_hex(4)}"
        url = f"s3://{bucket}/{ROOT}"
        settings = s3_settings(server, tmp_path / "state", bucket, FARM_STORAGE_URL=url)
        storage = open_storage(settings)
        storage.check()
        raw = raw_s3(server)

        def names() -> list[str]:
            pages = raw.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

        yield Backend(
            "s3",
            storage,
            url,
            names,
            lambda name, data: raw.put_object(Bucket=bucket, Key=name, Body=data),
        )
        keys = names()
        for start in range(0, len(keys), 1000):
            raw.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start : start + 1000]]}
            )
        raw.delete_bucket(Bucket=bucket)
    else:
        container = tmp_path / "container"
        url = f"file://{container / ROOT}"
        settings = load_settings(
            {"FARM_STATE_DIR": str(tmp_path / "state"), "FARM_STORAGE_URL": url}, cwd=tmp_path
        )
        storage = open_storage(settings)
        storage.check()

        def names() -> list[str]:
            return sorted(
                p.relative_to(container).as_posix() for p in container.rglob("*") if not p.is_dir()
            )

        def put(name: str, data: bytes) -> None:
            (container / name).parent.mkdir(parents=True, exist_ok=True)
            (container / name).write_bytes(data)

        yield Backend("file", storage, url, names, put)


def under_root(*keys: str) -> list[str]:
    return sorted(f"{ROOT}/{k}" for k in keys)


def test_put_get_head_and_download_round_trip(backend: Backend, tmp_path: Path) -> None:
    s = backend.storage
    s.put_bytes("jobs/j1/log.txt", b"hello farm\n")
    assert s.get_bytes("jobs/j1/log.txt") == b"hello farm\n"
    assert s.head("jobs/j1/log.txt") == ObjectInfo("jobs/j1/log.txt", 11, None)

    payload = os.urandom(300_000)
    source = tmp_path / "frame.png"
    source.write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    s.put_file("jobs/j1/attempts/0/1/frame.0001.png", source, sha256=digest)
    info = s.head("jobs/j1/attempts/0/1/frame.0001.png")
    # S3 keeps our SHA-256 in the object's metadata; the filesystem in an extended attribute.
    assert info == ObjectInfo("jobs/j1/attempts/0/1/frame.0001.png", 300_000, digest)

    target = tmp_path / "down" / "frame.png"
    target.parent.mkdir()
    # A download says what it fetched, SHA-256 included, from the same read.
    assert s.download_file("jobs/j1/attempts/0/1/frame.0001.png", target) == info
    assert target.read_bytes() == payload

    # Without a digest there is no sha256 metadata, and an empty object is still an object.
    s.put_file("scenes/empty.toml", _write(tmp_path / "empty.toml", b""))
    assert s.head("scenes/empty.toml") == ObjectInfo("scenes/empty.toml", 0, None)
    assert s.get_bytes("scenes/empty.toml") == b""

    # A second put replaces the object.
    s.put_bytes("jobs/j1/log.txt", b"again")
    assert s.get_bytes("jobs/j1/log.txt") == b"again"
    assert s.head("jobs/j1/log.txt").size == 5
    assert backend.raw_names() == under_root(
        "jobs/j1/log.txt", "jobs/j1/attempts/0/1/frame.0001.png", "scenes/empty.toml"
    )


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_copy_keeps_bytes_and_digest_and_delete_removes(backend: Backend, tmp_path: Path) -> None:
    s = backend.storage
    payload = b"\x89PNG fake frame" * 100
    digest = hashlib.sha256(payload).hexdigest()
    s.put_file(
        "jobs/j/attempts/3/2/out.0007.png", _write(tmp_path / "o.png", payload), sha256=digest
    )
    s.put_bytes("jobs/j/frames/shot.0007.png", b"stale")

    s.copy("jobs/j/attempts/3/2/out.0007.png", "jobs/j/frames/shot.0007.png")
    assert s.get_bytes("jobs/j/frames/shot.0007.png") == payload
    assert s.head("jobs/j/frames/shot.0007.png") == ObjectInfo("jobs/j/frames/shot.0007.png", len(payload), digest)
    assert s.get_bytes("jobs/j/attempts/3/2/out.0007.png") == payload  # the source stays

    # Deleting takes a list, ignores keys that are already gone, and leaves the rest.
    s.delete(["jobs/j/attempts/3/2/out.0007.png", "jobs/j/attempts/3/2/never-written.png"])
    assert s.head("jobs/j/attempts/3/2/out.0007.png") is None
    assert backend.raw_names() == under_root("jobs/j/frames/shot.0007.png")
    s.delete([])
    assert backend.raw_names() == under_root("jobs/j/frames/shot.0007.png")


def test_delete_many_keys_in_batches(backend: Backend) -> None:
    s = backend.storage
    keys = [f"jobs/big/frames/f.{i:04d}.png" for i in range(1005)]  # more than one S3 batch of 1000
    with ThreadPoolExecutor(16 if backend.name == "s3" else 1) as pool:
        list(pool.map(lambda key: s.put_bytes(key, b"x"), keys))
    s.put_bytes("jobs/big/keep.txt", b"k")
    assert len(list(s.list("jobs/big/"))) == 1006
    s.delete(keys)
    assert [o.key for o in s.list("jobs/big/")] == ["jobs/big/keep.txt"]


def test_list_filters_by_prefix_relative_to_the_root(backend: Backend) -> None:
    s = backend.storage
    for key, data in {
        "jobs/a/frames/shot.0002.png": b"22",
        "jobs/a/frames/shot.0001.png": b"1",
        "jobs/a/attempts/0/1/out.png": b"333",
        "jobs/a.txt": b"4444",
        "jobs/ab/frames/shot.0001.png": b"55555",
        "scenes/s.toml": b"666666",
    }.items():
        s.put_bytes(key, data)
    # Something beside the root, put there by another tool, is never listed.
    backend.raw_put("farm/rootless/jobs/a/x", b"?")
    backend.raw_put("farm/other.txt", b"?")

    def listed(prefix: str) -> list[tuple[str, int]]:
        # Listing order is not part of the contract: AWS lists in byte order, SeaweedFS walks its
        # directories (jobs/a/... before jobs/a.txt), the file backend sorts by key.
        return sorted((o.key, o.size) for o in s.list(prefix))

    assert listed("jobs/a/") == [
        ("jobs/a/attempts/0/1/out.png", 3),
        ("jobs/a/frames/shot.0001.png", 1),
        ("jobs/a/frames/shot.0002.png", 2),
    ]
    assert listed("jobs/a/frames/") == [
        ("jobs/a/frames/shot.0001.png", 1),
        ("jobs/a/frames/shot.0002.png", 2),
    ]
    assert listed("jobs/a/frames/shot.0001") == [("jobs/a/frames/shot.0001.png", 1)]
    # A prefix is a string prefix of the key, not a directory: "jobs/a" also matches jobs/a.txt, jobs/ab/.
    assert listed("jobs/a") == [
        ("jobs/a.txt", 4),
        ("jobs/a/attempts/0/1/out.png", 3),
        ("jobs/a/frames/shot.0001.png", 1),
        ("jobs/a/frames/shot.0002.png", 2),
        ("jobs/ab/frames/shot.0001.png", 5),
    ]
    assert [k for k, _ in listed("")] == [
        "jobs/a.txt",
        "jobs/a/attempts/0/1/out.png",
        "jobs/a/frames/shot.0001.png",
        "jobs/a/frames/shot.0002.png",
        "jobs/ab/frames/shot.0001.png",
        "scenes/s.toml",
    ]
    assert listed("jobs/zz/") == []
    assert listed("nothing") == []
    assert all(o.sha256 is None for o in s.list(""))


def test_objects_land_under_the_storage_prefix(backend: Backend) -> None:
    backend.storage.put_bytes("jobs/x/frames/a.0001.png", b"a")
    backend.storage.copy("jobs/x/frames/a.0001.png", "jobs/x/frames/b.0001.png")
    assert backend.raw_names() == under_root("jobs/x/frames/a.0001.png", "jobs/x/frames/b.0001.png")
    assert [o.key for o in backend.storage.list("jobs/")] == [
        "jobs/x/frames/a.0001.png",
        "jobs/x/frames/b.0001.png",
    ]
    assert backend.storage.url == backend.url


def test_missing_objects_raise_storage_errors_naming_the_key(
    backend: Backend, tmp_path: Path
) -> None:
    s = backend.storage
    assert s.head("jobs/none/frames/f.0001.png") is None
    for call in (
        lambda: s.get_bytes("jobs/none/frames/f.0001.png"),
        lambda: s.download_file("jobs/none/frames/f.0001.png", tmp_path / "f.png"),
        lambda: s.copy("jobs/none/frames/f.0001.png", "jobs/none/frames/g.0001.png"),
    ):
        with pytest.raises(StorageError) as err:
            call()
        message = str(err.value)
        assert "jobs/none/frames/f.0001.png" in message
        assert "\n" not in message
    assert not (tmp_path / "f.png").exists()
    assert s.head("jobs/none/frames/g.0001.png") is None
    assert backend.raw_names() == []


def test_a_directory_of_keys_is_not_an_object(backend: Backend) -> None:
    """The file backend holds jobs/d/x as a directory jobs/d; S3 has no object jobs/d: both agree."""
    s = backend.storage
    s.put_bytes("jobs/d/x", b"x")
    assert s.head("jobs/d") is None
    with pytest.raises(StorageError, match="jobs/d"):
        s.get_bytes("jobs/d")
    assert s.head("jobs/d/x/y") is None
    with pytest.raises(StorageError, match="jobs/d/x/y"):
        s.get_bytes("jobs/d/x/y")


UNSAFE_KEYS = [
    "../x",
    "a/../../x",
    "/abs",
    "/etc/passwd",
    "a//b",
    "a/./b",
    "./a",
    "a/.",
    "a/..",
    "..",
    ".",
    "",
    "a/",
    "a\\b",
    "..\\x",
]


@pytest.mark.parametrize("key", UNSAFE_KEYS)
def test_check_key_refuses_unsafe_keys(key: str) -> None:
    with pytest.raises(StorageError) as err:
        check_key(key)
    assert str(err.value) == f"storage key {key!r} is not a safe relative key"


@pytest.mark.parametrize(
    "key", ["a", "jobs/j/frames/shot.0001.png", "scenes/abc.blend", "a/.hidden", "a/..b/c", "x..y"]
)
def test_check_key_accepts_plain_relative_keys(key: str) -> None:
    assert check_key(key) == key


def test_every_operation_refuses_unsafe_keys_and_writes_nothing(
    backend: Backend, tmp_path: Path
) -> None:
    s = backend.storage
    s.put_bytes("ok", b"ok")
    source = _write(tmp_path / "src.bin", b"data")
    for key in ["../escaped", "../../escaped", "/tmp/escaped", "a//b", "a/./b", "", "a\\b"]:
        calls = [
            lambda k: s.put_bytes(k, b"x"),
            lambda k: s.put_file(k, source),
            lambda k: s.get_bytes(k),
            lambda k: s.download_file(k, tmp_path / "out"),
            lambda k: s.head(k),
            lambda k: s.copy("ok", k),
            lambda k: s.copy(k, "copied"),
            lambda k: s.delete([k]),
        ]
        for call in calls:
            with pytest.raises(StorageError) as err:
                call(key)
            assert str(err.value) == f"storage key {key!r} is not a safe relative key"
    for prefix in ["../", "..", "/", "/etc", "a//", "a/../..", "a\\b"]:
        with pytest.raises(StorageError) as err:
            list(s.list(prefix))
        assert str(err.value) == f"storage prefix {prefix!r} is not a safe relative prefix"
    assert backend.raw_names() == under_root("ok")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["src.bin"]


def test_file_backend_stays_inside_its_root(tmp_path: Path) -> None:
    root = tmp_path / "farm" / "root"
    sibling = tmp_path / "farm" / "secret.txt"
    sibling.parent.mkdir(parents=True)
    sibling.write_bytes(b"not the farm's")
    s = open_storage(
        load_settings(
            {"FARM_STATE_DIR": str(tmp_path / "st"), "FARM_STORAGE_URL": f"file://{root}"},
            cwd=tmp_path,
        )
    )
    assert not root.exists()
    s.check()
    assert root.is_dir()
    for key in ["../secret.txt", "a/../../secret.txt", str(sibling)]:
        with pytest.raises(StorageError):
            s.put_bytes(key, b"overwritten")
        with pytest.raises(StorageError):
            s.delete([key])
    s.put_bytes("a/b/c.png", b"c")
    assert sibling.read_bytes() == b"not the farm's"
    assert sorted(
        p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()
    ) == [
        "farm/root/a/b/c.png",
        "farm/secret.txt",
    ]


def test_file_backend_write_is_atomic(tmp_path: Path, monkeypatch) -> None:
    """A write that dies half way leaves the old object (or none) under the final name, no
    partial file, and no temporary file behind."""
    root = tmp_path / "root"
    s = open_storage(
        load_settings(
            {"FARM_STATE_DIR": str(tmp_path / "st"), "FARM_STORAGE_URL": f"file://{root}"},
            cwd=tmp_path,
        )
    )
    s.put_bytes("jobs/j/frames/f.0001.png", b"old frame")
    source = _write(tmp_path / "new.png", b"N" * 100_000)
    seen_during_write: list[list[str]] = []

    def half_then_disk_full(src, dst, digest=None):
        dst.write(src.read(50_000))
        dst.flush()
        # Mid-write, the final name still holds the old object and the partial data lies elsewhere.
        seen_during_write.append(sorted(p.name for p in (root / "jobs/j/frames").iterdir()))
        assert (root / "jobs/j/frames/f.0001.png").read_bytes() == b"old frame"
        assert [o.key for o in s.list("")] == ["jobs/j/frames/f.0001.png"]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files_backend, "_copy", half_then_disk_full)
    with pytest.raises(StorageError) as err:
        s.put_file("jobs/j/frames/f.0001.png", source)
    assert (
        str(err.value)
        == f"storage file://{root}: cannot write jobs/j/frames/f.0001.png (No space left on device)"
    )
    with pytest.raises(StorageError):
        s.put_file("jobs/j/frames/f.0002.png", source)
    monkeypatch.undo()

    assert (
        len(seen_during_write) == 2 and len(seen_during_write[0]) == 2
    )  # the old file and one temporary
    assert seen_during_write[0][0].startswith(".put-")
    assert sorted(p.name for p in (root / "jobs/j/frames").iterdir()) == ["f.0001.png"]
    assert s.get_bytes("jobs/j/frames/f.0001.png") == b"old frame"
    assert s.head("jobs/j/frames/f.0002.png") is None

    # An interrupt (not an OSError) cleans up too, and is not turned into a StorageError.
    def interrupted(src, dst, digest=None):
        dst.write(b"part")
        raise KeyboardInterrupt

    monkeypatch.setattr(files_backend, "_copy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        s.copy("jobs/j/frames/f.0001.png", "jobs/j/frames/f.0003.png")
    monkeypatch.undo()
    assert sorted(p.name for p in (root / "jobs/j/frames").iterdir()) == ["f.0001.png"]

    s.put_file("jobs/j/frames/f.0001.png", source)
    assert s.get_bytes("jobs/j/frames/f.0001.png") == b"N" * 100_000
    assert sorted(p.name for p in (root / "jobs/j/frames").iterdir()) == ["f.0001.png"]


def test_file_backend_refuses_a_host_in_its_url(tmp_path: Path) -> None:
    settings = load_settings(
        {"FARM_STATE_DIR": str(tmp_path), "FARM_STORAGE_URL": "file://nas/renders"}, cwd=tmp_path
    )
    with pytest.raises(StorageError) as err:
        open_storage(settings)
    assert (
        str(err.value)
        == "storage_url 'file://nas/renders': file:// URLs take no host (write file:///path)"
    )


def test_s3_check_creates_a_missing_bucket(seaweed: S3Server, tmp_path: Path) -> None:
    from botocore.exceptions import ClientError

    bucket = f"rf-new-{secrets.token_hex(4)}"
    raw = raw_s3(seaweed)
    with pytest.raises(ClientError):
        raw.head_bucket(Bucket=bucket)
    storage = open_storage(s3_settings(seaweed, tmp_path, bucket))
    storage.check()
    raw.head_bucket(Bucket=bucket)
    storage.check()  # a second check finds it and changes nothing
    storage.put_bytes("k", b"v")
    assert raw.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
    raw.delete_object(Bucket=bucket, Key="k")
    raw.delete_bucket(Bucket=bucket)


@pytest.mark.parametrize("wrong", ["access key", "secret key"])
def test_s3_wrong_credentials_give_one_line_without_the_secret(
    seaweed: S3Server, tmp_path: Path, monkeypatch, wrong: str
) -> None:
    settings = s3_settings(
        seaweed, tmp_path, "renderfarm", FARM_STORAGE_URL="s3://renderfarm/creds-test"
    )
    bad_secret = "Sup3rSecretValue-" + secrets.token_hex(8)
    code = "InvalidAccessKeyId" if wrong == "access key" else "SignatureDoesNotMatch"
    if wrong == "access key":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "RFNOSUCHKEY0000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", bad_secret)
    # A fresh client cache: the process-wide one is keyed by endpoint, not by the environment's keys.
    monkeypatch.setattr(s3_backend, "_CLIENTS", {})
    storage = open_storage(settings)
    source = _write(tmp_path / "f.bin", b"payload")
    for action, call in [
        ("put", lambda: storage.put_bytes("jobs/j/x", b"x")),
        ("upload", lambda: storage.put_file("jobs/j/x", source)),
        ("get", lambda: storage.get_bytes("jobs/j/x")),
        ("list", lambda: list(storage.list("jobs/"))),
        ("head bucket", storage.check),
    ]:
        with pytest.raises(StorageError) as err:
            call()
        message = str(err.value)
        assert "\n" not in message
        assert bad_secret not in message and seaweed.secret_key not in message
        where = "s3://renderfarm/creds-test/" + (
            "" if action == "head bucket" else "jobs/" if action == "list" else "jobs/j/x"
        )
        assert message.startswith(f"storage {where}: {action} failed ("), message
        # The server's reason is kept; a HEAD answer has no body, so only its status is left.
        assert (f"{code}" if action != "head bucket" else "(403: Forbidden)") in message, message


def test_key_layout_exact() -> None:
    assert job_prefix("a1b2c3d4") == "jobs/a1b2c3d4/"
    assert frames_prefix("a1b2c3d4") == "jobs/a1b2c3d4/frames/"
    assert attempt_prefix("node-1", "a1b2c3d4", 0, 1) == "nodes/node-1/jobs/a1b2c3d4/0/1/"
    assert attempt_prefix("n2", "a1b2c3d4", 12, 3) == "nodes/n2/jobs/a1b2c3d4/12/3/"
    assert frame_key("a1b2c3d4", "shot", 7, "png") == "jobs/a1b2c3d4/frames/shot.0007.png"
    assert frame_key("a1b2c3d4", "shot", 0, "exr") == "jobs/a1b2c3d4/frames/shot.0000.exr"
    assert frame_key("a1b2c3d4", "shot", 1001, "png") == "jobs/a1b2c3d4/frames/shot.1001.png"
    assert frame_key("a1b2c3d4", "shot", 123456, "png") == "jobs/a1b2c3d4/frames/shot.123456.png"
    assert frame_key("a1b2c3d4", "shot", -7, "png") == "jobs/a1b2c3d4/frames/shot.-0007.png"
    assert frame_key("a1b2c3d4", "shot", -12345, "tif") == "jobs/a1b2c3d4/frames/shot.-12345.tif"
    sha = hashlib.sha256(b"scene").hexdigest()
    assert scene_key(sha, ".toml") == f"scenes/{sha}.toml"
    assert scene_key(sha, ".blend") == f"scenes/{sha}.blend"
    for key in [
        attempt_prefix("n", "j", 1, 2) + "out.0001.png",
        frame_key("j", "s", -1, "png"),
        scene_key(sha, ".toml"),
    ]:
        assert check_key(key) == key


def test_s3_uploads_and_copies_go_as_plain_signed_requests_and_fall_back_to_boto3(
    seaweed: S3Server, tmp_path: Path, monkeypatch
) -> None:
    root = f"direct-{secrets.token_hex(4)}"
    storage = open_storage(s3_settings(seaweed, tmp_path, "renderfarm", FARM_STORAGE_URL=f"s3://renderfarm/{root}"))
    data = b"a frame" * 100
    source = _write(tmp_path / "f.bin", data)
    digest = hashlib.sha256(data).hexdigest()

    def refused(**kwargs):
        raise AssertionError("boto3's own call was made")

    def unsent(request):
        raise AssertionError("botocore's send was called")

    # boto3's upload, read and copy refuse, and so does botocore's send: the signed requests go
    # alone, straight through the endpoint's connection pool.
    monkeypatch.setattr(storage._s3, "put_object", refused)
    monkeypatch.setattr(storage._s3, "get_object", refused)
    monkeypatch.setattr(storage._s3, "copy_object", refused)
    monkeypatch.setattr(storage._s3._endpoint.http_session, "send", unsent)
    etag = storage.put_file("a/f.bin", source, sha256=digest)
    storage.copy("a/f.bin", "b/f.bin", if_match=etag)
    assert storage.get_tagged("b/f.bin") == (data, etag)
    monkeypatch.undo()
    raw = raw_s3(seaweed)
    for key in ("a/f.bin", "b/f.bin"):
        got = raw.get_object(Bucket="renderfarm", Key=f"{root}/{key}")
        assert got["Body"].read() == data and got["Metadata"] == {"sha256": digest}
    assert raw.head_object(Bucket="renderfarm", Key=f"{root}/a/f.bin")["ETag"] == etag

    # A request the server refuses is made again through boto3, whose error names the reason.
    with pytest.raises(StorageError, match="PreconditionFailed"):
        storage.copy("a/f.bin", "c/f.bin", if_match='"0123"')
    # With the signed path unusable, boto3 makes every call.
    monkeypatch.setattr(storage._direct, "send", lambda *args, **kwargs: None)
    storage.copy("a/f.bin", "d/f.bin", if_match=etag)
    assert storage.put_file("a/g.bin", source, sha256=digest) == etag
    assert storage.get_bytes("d/f.bin") == data


def test_put_bytes_keeps_the_digest_it_is_given_by_either_path(backend: Backend, monkeypatch) -> None:
    """How the manager promotes a checked frame: the bytes written back with their SHA-256, kept
    as an upload's (S3 metadata, the file store's record); on S3 by the signed request, or by
    boto3 where that path cannot be used."""
    data = b"a checked frame" * 50
    digest = hashlib.sha256(data).hexdigest()
    backend.storage.put_bytes("jobs/j/frames/a.png", data, sha256=digest)
    if backend.name == "s3":
        monkeypatch.setattr(backend.storage._direct, "send", lambda *args, **kwargs: None)
        backend.storage.put_bytes("jobs/j/frames/b.png", data, sha256=digest)
    for key in ("jobs/j/frames/a.png",) + (("jobs/j/frames/b.png",) if backend.name == "s3" else ()):
        assert backend.storage.head(key) == ObjectInfo(key, len(data), digest)
        assert backend.storage.get_bytes(key) == data
    backend.storage.put_bytes("logs/plain.log", b"no digest")
    assert backend.storage.head("logs/plain.log").sha256 is None
