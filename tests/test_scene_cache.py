"""A worker's scene cache (renderfarm_worker.scenecache) stays under FARM_SCENE_CACHE_GB while it
is given more scenes than fit: the least recently used go, never the scene about to render. A
real worker runtime fetches real scenes from file storage (its Redis a real Valkey)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import redis
from nodekit import unenrolled
from renderfarm_worker import runtime, scenecache

from renderfarm.config import load_settings
from renderfarm.storage.keys import scene_key

SCENE_BYTES = 4000
CAP = 10_000  # bytes: two scenes fit, a third does not


def scene(n: int) -> bytes:
    head = f"# scene {n}\n".encode()
    return head + b"#" * (SCENE_BYTES - len(head) - 1) + b"\n"


def test_the_scene_cache_stays_under_its_cap_evicting_the_least_recently_used(redis_url: str, tmp_path: Path) -> None:
    settings = load_settings({"FARM_STATE_DIR": str(tmp_path), "FARM_REDIS_URL": redis_url,
                              "FARM_STORAGE_URL": f"file://{tmp_path / 'store'}",
                              "FARM_SCENE_CACHE_GB": str(CAP / 10**9)}, cwd=tmp_path)
    rt = runtime.WorkerRuntime(settings=settings, credentials=unenrolled("w", settings), pool="default",
                               scratch=tmp_path / "scratch", r=redis.Redis.from_url(redis_url))
    shas = []
    for n in range(6):
        sha = hashlib.sha256(scene(n)).hexdigest()
        rt.storage.put_bytes(scene_key(sha, ".toml"), scene(n))
        shas.append(sha)
    cache = tmp_path / "scratch" / "scenes"

    def fetch(n: int) -> Path:
        path = rt.fetch_scene(scene_key(shas[n], ".toml"), shas[n])
        assert path.read_bytes() == scene(n)  # the scene in use is there, whole
        size = sum(scenecache.entry_size(p) for p in cache.iterdir())
        assert size <= CAP, f"the cache holds {size} bytes, over its {CAP}"
        return path

    def cached() -> set[int]:
        return {shas.index(p.name.removesuffix(".toml")) for p in cache.iterdir()}

    fetch(0)
    fetch(1)
    assert cached() == {0, 1}
    fetch(0)  # used again: now 1 is the least recently used
    fetch(2)
    assert cached() == {0, 2}
    for n in range(3, 6):  # more scenes than fit, one after another
        fetch(n)
    assert cached() == {4, 5}

    # A scene larger than the cap on its own stays while it is in use; the others go.
    big = b"#" * (CAP + 1)
    big_sha = hashlib.sha256(big).hexdigest()
    rt.storage.put_bytes(scene_key(big_sha, ".toml"), big)
    assert rt.fetch_scene(scene_key(big_sha, ".toml"), big_sha).read_bytes() == big
    assert [p.name for p in cache.iterdir()] == [f"{big_sha}.toml"]


def test_eviction_counts_unpacked_folders_and_leaves_work_in_progress(tmp_path: Path) -> None:
    import os

    (tmp_path / "aa").mkdir()
    (tmp_path / "aa" / "main.blend").write_bytes(b"x" * 600)
    (tmp_path / "aa" / "tex").mkdir()
    (tmp_path / "aa" / "tex" / "t.png").write_bytes(b"x" * 600)
    (tmp_path / "bb.toml").write_bytes(b"x" * 500)
    (tmp_path / ".scene-partial").write_bytes(b"x" * 5000)  # a download in progress
    os.utime(tmp_path / "aa", (1, 1))  # aa is the oldest
    assert scenecache.entry_size(tmp_path / "aa") == 1200
    assert scenecache.evict(tmp_path, 1000, {"bb.toml"}) == ["aa"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".scene-partial", "bb.toml"]
    assert scenecache.evict(tmp_path, 100, {"bb.toml"}) == []  # the one in use stays
