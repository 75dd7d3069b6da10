"""The farm's caps: pixels, samples, scene files and scene packs are refused over them, in one line
that names the cap and the setting that raises it, on submit and again on the worker."""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

import pytest
from conftest import farm_env, run_farm

from renderfarm.errors import InputError, RenderError, SceneError
from renderfarm.renderers.blender.scene import unpack_scene
from renderfarm.renderers.limits import Limits, check_pack, check_render_size, declared_entries
from renderfarm.renderers.registry import RenderRequest, get_renderer

SCENE = """\
[render]
width = 64
height = 36
samples = 8

[camera]
position = [0, 2, 8]
look_at = [0, 1, 0]
"""


@pytest.fixture
def farm_settings(tmp_path, monkeypatch):
    """This process's settings come from a private state directory and an empty working one;
    returns a setter for FARM_* variables."""
    for name in [n for n in os.environ if n.startswith("FARM_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("FARM_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    return monkeypatch.setenv


def test_a_frame_over_the_pixel_or_sample_cap_is_refused_naming_the_setting():
    with pytest.raises(InputError) as e:
        check_render_size(65536, 65536, None, Limits())
    assert str(e.value) == ("resolution: 65536x65536 is 4294967296 pixels a frame, over the farm's cap of 268435456 "
                            "(set FARM_MAX_PIXELS or max_pixels in farm.toml to raise it)")
    with pytest.raises(InputError, match=r"^samples: 1000000 is over the farm's cap of 65536 .*FARM_MAX_SAMPLES"):
        check_render_size(1920, 1080, 1_000_000, Limits())
    check_render_size(16384, 16384, 65536, Limits())  # the caps themselves are allowed
    check_render_size(65536, 65536, 1_000_000, Limits(max_pixels=2**32, max_samples=10**6))


def blender_request(tmp_path: Path, size: tuple[int, int], samples: int | None) -> RenderRequest:
    return RenderRequest(tmp_path / "scene.blend", (1,), str(tmp_path / "out.{frame}.png"), *size,
                         frame_size=size, program="/usr/bin/blender",
                         options={"samples": samples} if samples else {})


def test_a_worker_refuses_a_blender_job_over_its_own_caps(tmp_path, farm_settings):
    blender = get_renderer("blender")
    with pytest.raises(RenderError, match=r"65536x65536 is 4294967296 pixels .*set FARM_MAX_PIXELS"):
        blender.command(blender_request(tmp_path, (65536, 65536), None))
    with pytest.raises(RenderError, match=r"samples: 1000000 is over .*set FARM_MAX_SAMPLES"):
        blender.command(blender_request(tmp_path, (1920, 1080), 1_000_000))
    argv = blender.command(blender_request(tmp_path, (1920, 1080), 4096))
    assert "--samples=4096" in argv
    farm_settings("FARM_MAX_SAMPLES", "1000000")  # the worker's own setting raises its cap
    assert "--samples=1000000" in blender.command(blender_request(tmp_path, (1920, 1080), 1_000_000))


def test_a_20_mb_scene_is_refused_on_submit_in_one_line(tmp_path):
    big = tmp_path / "big.toml"
    big.write_text(SCENE + ("# " + "x" * 98 + "\n") * 200_000)  # 20 MB of comment
    assert big.stat().st_size > 20_000_000
    env = farm_env(tmp_path / "state")
    proc = run_farm("submit", str(big), env=env, cwd=tmp_path, check=False, timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.strip() == (
        "farm: scene: 'big.toml' is 19.3 MiB, over the farm's cap of 10 MiB a scene file "
        "(set FARM_MAX_SCENE_BYTES or max_scene_bytes in farm.toml to raise it)")
    with pytest.raises(RenderError, match="big.toml' is 19.3 MiB"):  # a worker refuses it too
        get_renderer("builtin").command(RenderRequest(big, (1,), str(tmp_path / "o.{frame}.png"), 64, 36,
                                                      limits=Limits()))


def test_a_builtin_scene_over_the_object_or_sample_cap_is_refused(tmp_path, farm_settings):
    scene = tmp_path / "many.toml"
    scene.write_text(SCENE + "".join(f'[objects.s{i}]\ntype = "sphere"\ncenter = [0, 0, {i}]\nradius = 1\n'
                                     for i in range(6)))
    builtin = get_renderer("builtin")
    assert builtin.describe(scene).width == 64
    farm_settings("FARM_MAX_SCENE_OBJECTS", "5")
    with pytest.raises(SceneError, match=r"'many.toml' holds 6 objects and lights, over the farm's cap of 5 "
                                         r"\(set FARM_MAX_SCENE_OBJECTS"):
        builtin.describe(scene)
    with pytest.raises(InputError, match=r"samples: 8 is over the farm's cap of 4 .*FARM_MAX_SAMPLES"):
        builtin.describe(scene, Limits(max_samples=4))


def write_pack(path: Path, entries: dict[str, bytes], *, link: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("renderfarm.json", '{"main": "scene.blend"}')
        for name, data in entries.items():
            z.writestr(name, data)
        if link is not None:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, "/etc/passwd")
    return path


def declare_sizes(pack: Path, size: int) -> None:
    """Rewrite every central directory entry to declare `size` bytes unpacked (the data stays)."""
    data = bytearray(pack.read_bytes())
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        data[at + 24 : at + 28] = size.to_bytes(4, "little")  # the uncompressed size field
        at = data.find(b"PK\x01\x02", at + 4)
    pack.write_bytes(bytes(data))


def test_a_pack_declaring_more_than_the_cap_is_refused_before_unpacking(tmp_path, farm_settings):
    pack = write_pack(tmp_path / "big.zip", {f"tex{i}.png": b"x" * 100 for i in range(5)} | {"scene.blend": b"b"})
    declare_sizes(pack, 0xFFFFFFF0)  # 7 entries of 4 GiB each: 28 GiB declared
    assert sum(i.file_size for i in zipfile.ZipFile(pack).infolist()) > 20 * 2**30
    target = tmp_path / "unpacked"
    with pytest.raises(SceneError) as e:
        unpack_scene(pack, target)
    assert str(e.value) == ("scene pack 'big.zip': unpacks to 28 GiB, over the farm's cap of 20 GiB "
                            "(set FARM_MAX_UNPACKED_BYTES or max_unpacked_bytes in farm.toml to raise it)")
    assert not target.exists() and [p.name for p in tmp_path.iterdir()] == ["big.zip"]  # nothing written
    with pytest.raises(SceneError, match=r"holds 7 files, over the farm's cap of 6 \(set FARM_MAX_PACK_ENTRIES"):
        check_pack(pack, Limits(max_pack_entries=6, max_unpacked_bytes=2**40))


@pytest.mark.parametrize(("name", "why"), [
    ("../outside.png", "climbs out of the pack with '..'"),
    ("textures/../../outside.png", "climbs out of the pack with '..'"),
    ("/etc/cron.d/evil", "is an absolute path"),
    ("C:/Windows/evil.dll", "is an absolute path"),
])
def test_a_pack_entry_outside_the_pack_is_refused(tmp_path, farm_settings, name, why):
    pack = write_pack(tmp_path / "slip.zip", {"scene.blend": b"b", name: b"evil"})
    with pytest.raises(SceneError, match=f"^scene pack 'slip.zip': entry '{name}' {why}; refused$"):
        unpack_scene(pack, tmp_path / "unpacked")
    assert not (tmp_path / "unpacked").exists()


def test_a_symbolic_link_in_a_pack_is_refused(tmp_path, farm_settings):
    pack = write_pack(tmp_path / "link.zip", {"scene.blend": b"b"}, link="tex.png")
    with pytest.raises(SceneError, match="entry 'tex.png' is a symbolic link; refused"):
        unpack_scene(pack, tmp_path / "unpacked")
    assert not (tmp_path / "unpacked").exists()


def test_a_pack_within_the_caps_unpacks(tmp_path, farm_settings):
    pack = write_pack(tmp_path / "ok.zip", {"scene.blend": b"b", "textures/a.png": b"a"})
    assert unpack_scene(pack, tmp_path / "unpacked") == (tmp_path / "unpacked" / "scene.blend").resolve()


def test_the_entry_count_is_read_from_the_end_record_even_in_zip64(tmp_path):
    small = write_pack(tmp_path / "small.zip", {"a": b"", "b": b""})
    assert declared_entries(small) == 3
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as z:  # over 65535 entries: only a ZIP64 end record can count them
        for i in range(70_000):
            z.writestr(zipfile.ZipInfo(f"{i}"), b"")
    assert declared_entries(many) == 70_000
    with pytest.raises(SceneError, match="holds 70000 files, over the farm's cap of 100"):
        check_pack(many, Limits(max_pack_entries=100))


def test_the_caps_are_settings(tmp_path):
    from renderfarm.config import load_settings
    from renderfarm.errors import ConfigError

    (tmp_path / "farm.toml").write_text("max_pixels = 2073600\nmax_unpacked_bytes = 1073741824\n")
    env = {"FARM_STATE_DIR": str(tmp_path / "state"), "FARM_MAX_SAMPLES": "128"}
    limits = Limits.of(load_settings(env, cwd=tmp_path))
    assert limits == Limits(max_pixels=1920 * 1080, max_samples=128, max_unpacked_bytes=2**30)
    with pytest.raises(ConfigError, match=r"^max_pack_entries \(from env FARM_MAX_PACK_ENTRIES\): 0 must be"):
        load_settings({**env, "FARM_MAX_PACK_ENTRIES": "0"}, cwd=tmp_path)
