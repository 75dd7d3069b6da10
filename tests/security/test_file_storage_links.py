"""file:// storage under a tree that render nodes can write into: a symbolic link planted below
the root (to a file or to a directory outside it) is refused by every read, write, copy and
delete, and never listed, so no key reaches anything outside the root."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from renderfarm.errors import StorageError
from renderfarm.storage.files import FileStorage


@pytest.fixture()
def planted(tmp_path: Path):
    """A storage root holding one real frame, a link to a file outside the root in place of a
    frame, and a link to a directory outside the root in place of a job's frames directory."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"not the farm's")
    (outside / "shot.0001.png").write_bytes(b"outside frame")
    storage = FileStorage(root, f"file://{root}")
    source = tmp_path / "frame.png"
    source.write_bytes(b"a real frame")
    storage.put_file("jobs/a/frames/shot.0001.png", source, sha256=hashlib.sha256(b"a real frame").hexdigest())
    os.symlink(outside / "secret.txt", root / "jobs/a/frames/shot.0002.png")
    (root / "jobs/b").mkdir(parents=True)
    os.symlink(outside, root / "jobs/b/frames")
    return storage, root, outside, source


def outside_files(outside: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(outside.iterdir())}


LINKED_FILE = "jobs/a/frames/shot.0002.png"
UNDER_LINKED_DIR = "jobs/b/frames/shot.0001.png"
NEW_UNDER_LINKED_DIR = "jobs/b/frames/new.0001.png"


@pytest.mark.parametrize(
    ("key", "where"),
    [(LINKED_FILE, LINKED_FILE), (UNDER_LINKED_DIR, "jobs/b/frames"), (NEW_UNDER_LINKED_DIR, "jobs/b/frames")],
)
def test_every_operation_refuses_a_link_to_outside_the_root(planted, tmp_path: Path, key: str, where: str) -> None:
    storage, root, outside, source = planted
    before = outside_files(outside)
    calls = {
        "get_bytes": lambda: storage.get_bytes(key),
        "download_file": lambda: storage.download_file(key, tmp_path / "fetched"),
        "head": lambda: storage.head(key),
        "put_bytes": lambda: storage.put_bytes(key, b"overwritten"),
        "put_file": lambda: storage.put_file(key, source),
        "copy from": lambda: storage.copy(key, "jobs/a/frames/copied.png"),
        "copy to": lambda: storage.copy("jobs/a/frames/shot.0001.png", key),
        "delete": lambda: storage.delete([key]),
    }
    refusals = {}
    for name, call in calls.items():
        if key == NEW_UNDER_LINKED_DIR and name in ("get_bytes", "download_file", "head", "copy from", "delete"):
            continue  # nothing there to read or delete; the writes below are what could escape
        with pytest.raises(StorageError) as err:
            call()
        refusals[name] = str(err.value)
    assert set(refusals.values()) == {f"storage file://{root}: refused {key}: {where} is a symbolic link"}
    assert outside_files(outside) == before
    assert not (tmp_path / "fetched").exists()
    assert storage.head("jobs/a/frames/copied.png") is None
    assert os.readlink(root / LINKED_FILE) == str(outside / "secret.txt")  # the link itself stays too


def test_links_are_not_listed_and_real_objects_still_work(planted, tmp_path: Path) -> None:
    storage, _root, outside, _source = planted
    assert [o.key for o in storage.list("")] == ["jobs/a/frames/shot.0001.png"]
    assert [o.key for o in storage.list("jobs/a/")] == ["jobs/a/frames/shot.0001.png"]
    with pytest.raises(StorageError, match="refused jobs/b/frames/: jobs/b/frames is a symbolic link"):
        list(storage.list("jobs/b/frames/"))
    # The real frame is read, copied (with its SHA-256) and deleted as before.
    assert storage.get_bytes("jobs/a/frames/shot.0001.png") == b"a real frame"
    storage.copy("jobs/a/frames/shot.0001.png", "jobs/c/frames/shot.0001.png")
    assert storage.head("jobs/c/frames/shot.0001.png").sha256 == hashlib.sha256(b"a real frame").hexdigest()
    storage.delete(["jobs/a/frames/shot.0001.png", "jobs/c/frames/shot.0001.png"])
    assert storage.head("jobs/a/frames/shot.0001.png") is None
    assert outside_files(outside) == {"secret.txt": b"not the farm's", "shot.0001.png": b"outside frame"}


def test_a_fifo_under_a_key_is_refused_without_waiting(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path / "root", f"file://{tmp_path / 'root'}")
    storage.put_bytes("jobs/a/log.txt", b"log")
    os.mkfifo(tmp_path / "root/jobs/a/pipe")
    with pytest.raises(StorageError, match="refused jobs/a/pipe: jobs/a/pipe is not a plain file"):
        storage.get_bytes("jobs/a/pipe")
    assert [o.key for o in storage.list("jobs/")] == ["jobs/a/log.txt"]


def test_a_root_reached_through_a_link_is_the_admins_choice(tmp_path: Path) -> None:
    """Only what lies below the root is checked: the root's own path may be a link (a mount)."""
    (tmp_path / "nas").mkdir()
    os.symlink(tmp_path / "nas", tmp_path / "farm")
    storage = FileStorage(tmp_path / "farm", f"file://{tmp_path / 'farm'}")
    storage.put_bytes("jobs/a/frames/shot.0001.png", b"frame")
    assert storage.get_bytes("jobs/a/frames/shot.0001.png") == b"frame"
    assert (tmp_path / "nas/jobs/a/frames/shot.0001.png").read_bytes() == b"frame"
