"""Files an OpenJD job brings from the artist's disk (issue 18, acceptance 4 and 6): IN PATH
parameters and a bundle's asset references are uploaded content-addressed at submit and found in
the worker's session, by their original absolute paths through path mapping, after they are
gone from the artist's disk; and a bundle in the shape DCC submitters write (`deadline:*` values,
asset references, an adaptor started in a job environment) runs with its priority and retries."""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import stat
from pathlib import Path

import pytest
import yaml
from conftest import run_farm, wait_job

from renderfarm.config import load_settings
from renderfarm.errors import InputError
from renderfarm.openjd_assets import gather
from renderfarm.wire import Limits

# Reads each original path (argv[4:]) through the session's path mapping rules, as a DCC's
# adaptor does with the paths inside its scene, and writes their SHA-256s (and the IN scene's).
PROOF = '''
import hashlib, json, sys
from pathlib import Path, PurePosixPath
rules_file, scene, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
doc = json.loads(Path(rules_file).read_text()) if rules_file else {}
rules = doc.get("path_mapping_rules", []) if isinstance(doc, dict) else doc
rules.sort(key=lambda r: -len(PurePosixPath(r["source_path"]).parts))
def mapped(path):
    for rule in rules:
        source = PurePosixPath(rule["source_path"])
        if PurePosixPath(path) == source or source in PurePosixPath(path).parents:
            return Path(rule["destination_path"], PurePosixPath(path).relative_to(source))
    return Path(path)
lines = [f"scene {hashlib.sha256(Path(scene).read_bytes()).hexdigest()}"]
for original in sys.argv[4:]:
    lines.append(f"{original} {hashlib.sha256(mapped(original).read_bytes()).hexdigest()}")
out.mkdir(parents=True, exist_ok=True)
(out / "proof.txt").write_text("\\n".join(lines) + "\\n")
print("openjd_progress: 100")
'''


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def artist_files(artist: Path) -> dict[Path, bytes]:
    files = {artist / "shot" / "scene.txt": b"the scene\n", artist / "tex" / "wood.png": b"\x89PNG wood",
             artist / "tex" / "sub" / "stone.png": b"\x89PNG stone", artist / "notes" / "readme.txt": b"notes\n"}
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def proof_bundle(bundle: Path, artist: Path, originals: list[Path]) -> None:
    bundle.mkdir(parents=True)
    template = {
        "specificationVersion": "jobtemplate-2023-09",
        "name": "assets-proof",
        "parameterDefinitions": [
            {"name": "Scene", "type": "PATH", "objectType": "FILE", "dataFlow": "IN"},
            {"name": "OutDir", "type": "PATH", "objectType": "DIRECTORY", "dataFlow": "OUT", "default": "out"},
            {"name": "Originals", "type": "STRING", "default": ""},
        ],
        "steps": [{
            "name": "Read",
            "script": {
                "embeddedFiles": [{"name": "Proof", "type": "TEXT", "filename": "proof.py", "data": PROOF}],
                "actions": {"onRun": {"command": "bash", "args": [
                    "-c", 'exec "${FARM_PYTHON:-python3}" "$1" "$2" "$3" "$4" $5', "proof",
                    "{{Task.File.Proof}}", "{{Session.PathMappingRulesFile}}", "{{Param.Scene}}",
                    "{{Param.OutDir}}", "{{Param.Originals}}"]}},
            },
        }],
    }
    (bundle / "template.yaml").write_text(yaml.safe_dump(template, sort_keys=False))
    (bundle / "parameter_values.yaml").write_text(yaml.safe_dump({"parameterValues": [
        {"name": "Scene", "value": str(artist / "shot" / "scene.txt")},
        {"name": "Originals", "value": " ".join(str(p) for p in originals)},
        {"name": "deadline:targetTaskRunStatus", "value": "SUSPENDED"},
    ]}))
    (bundle / "asset_references.yaml").write_text(yaml.safe_dump({"assetReferences": {
        "inputs": {"filenames": [str(artist / "notes" / "readme.txt")],
                   "directories": [str(artist / "tex")]},
        "outputs": {"directories": []}}}))


def test_gather_places_in_paths_under_their_parameter_and_other_references_under_asset_roots(tmp_path):
    artist = tmp_path / "artist"
    artist_files(artist)
    proof_bundle(tmp_path / "bundle", artist, [])
    template = yaml.safe_load((tmp_path / "bundle" / "template.yaml").read_text())
    refs = yaml.safe_load((tmp_path / "bundle" / "asset_references.yaml").read_text())["assetReferences"]
    refs["inputs"]["filenames"].append(str(artist / "tex" / "wood.png"))  # inside a referenced folder
    got = gather(template, {"Scene": str(artist / "shot" / "scene.txt")}, refs, tmp_path / "bundle", Limits())
    assert sorted(at for _, at in got.files) == [
        "Scene/scene.txt", "asset-roots/0/readme.txt", "asset-roots/1/sub/stone.png", "asset-roots/1/wood.png"]
    assert got.mappings == ((str(artist / "notes"), "asset-roots/0"), (str(artist / "tex"), "asset-roots/1"))
    assert dict((at, p) for p, at in got.files)["asset-roots/1/wood.png"] == artist / "tex" / "wood.png"


def test_gather_names_a_missing_in_path_a_missing_reference_and_the_caps_in_one_line(tmp_path):
    template = {"parameterDefinitions": [{"name": "Scene", "type": "PATH", "dataFlow": "IN"}]}
    with pytest.raises(InputError, match=r"^parameter Scene: '/nowhere/x.ma' does not exist"):
        gather(template, {"Scene": "/nowhere/x.ma"}, None, tmp_path, Limits())
    refs = {"inputs": {"directories": [str(tmp_path / "gone")]}}
    with pytest.raises(InputError, match=r"^asset_references: folder '.*gone' does not exist"):
        gather({}, {}, refs, tmp_path, Limits())
    (tmp_path / "tex").mkdir()
    for i in range(3):
        (tmp_path / "tex" / f"t{i}.png").write_bytes(b"x" * 10)
    refs = {"inputs": {"directories": [str(tmp_path / "tex")]}}
    with pytest.raises(InputError, match=r"^assets: 3 files to upload, over the farm's cap of 2 \(.*FARM_MAX_PACK"):
        gather({}, {}, refs, tmp_path, Limits(max_pack_entries=2))
    with pytest.raises(InputError, match=r"^assets: 30 bytes to upload, over the farm's cap of .*FARM_MAX_UNPACKED"):
        gather({}, {}, refs, tmp_path, Limits(max_unpacked_bytes=29))
    (tmp_path / "tex" / "a b.png").write_bytes(b"x")
    with pytest.raises(InputError, match=r"^asset_references: '.*a b.png' cannot travel"):
        gather({}, {}, refs, tmp_path, Limits())


def test_a_task_order_takes_an_asset_only_by_its_own_content_address():
    from renderfarm.wire import OpenJDInput, OpenJDTask, TaskOrder, WireError

    def order(key: str, digest: str) -> TaskOrder:
        openjd = OpenJDTask(template={}, step="s", inputs=(OpenJDInput(path="a/b", key=key, size=1, sha256=digest),))
        return TaskOrder(kind="openjd", attempt_id=1, attempt=1, task_id=1, task_index=0, node="n1",
                         job_id="abcd12", name="n", renderer="openjd", scene_key=f"scenes/{'0' * 64}.json",
                         scene_sha256="0" * 64, frames=(0,), width=1, height=1, timeout=60.0, openjd=openjd)

    assert order(f"assets/{'a' * 64}", "a" * 64).openjd.inputs[0].key == f"assets/{'a' * 64}"
    with pytest.raises((WireError, ValueError), match="is not the key of its asset"):
        order(f"assets/{'b' * 64}", "a" * 64)
    with pytest.raises((WireError, ValueError), match="is not the key of its asset"):
        order(f"jobs/ffff99/{'a' * 64}", "a" * 64)


FAKE_ADAPTOR = """#!/bin/bash
# A stand-in for a DCC's OpenJD adaptor: 'daemon start|stop' around the session, 'run' per task.
set -eu
case "$1" in
  daemon) echo "fake-adaptor: daemon $2"; echo "openjd_status: adaptor $2" ;;
  run)
    frame="$2"; scene="$3"; out="$4"
    echo "openjd_progress: 50"
    if [ "$frame" = 2 ]; then  # frame 2 fails its first 3 tries: done only with 4 tries or more
      echo x >> "$FAKE_ADAPTOR_TRIES"
      if [ "$(wc -l < "$FAKE_ADAPTOR_TRIES")" -le 3 ]; then echo "openjd_fail: flaky licence"; exit 1; fi
    fi
    mkdir -p "$out"
    echo "frame $frame of $(sha256sum "$scene" | cut -d' ' -f1)" > "$out/frame-$frame.txt"
    echo "openjd_progress: 100" ;;
  *) echo "openjd_fail: unknown verb $1"; exit 2 ;;
esac
"""


def dcc_bundle(bundle: Path, scene: Path) -> None:
    """A bundle as a DCC submitter writes it: the template, parameter_values.yaml with the
    submitter's deadline:* values, asset_references.yaml naming the scene."""
    bundle.mkdir(parents=True)
    template = {
        "specificationVersion": "jobtemplate-2023-09",
        "name": "FakeDCC Submission",
        "parameterDefinitions": [
            {"name": "SceneFile", "type": "PATH", "objectType": "FILE", "dataFlow": "IN"},
            {"name": "Frames", "type": "STRING", "default": "1-3"},
            {"name": "OutputDir", "type": "PATH", "objectType": "DIRECTORY", "dataFlow": "OUT",
             "default": "output"},
        ],
        "jobEnvironments": [{"name": "FakeAdaptor", "script": {"actions": {
            "onEnter": {"command": "fake-adaptor", "args": ["daemon", "start"]},
            "onExit": {"command": "fake-adaptor", "args": ["daemon", "stop"]}}}}],
        "steps": [{
            "name": "Render",
            "parameterSpace": {"taskParameterDefinitions": [
                {"name": "Frame", "type": "INT", "range": "{{Param.Frames}}"}]},
            "script": {"actions": {"onRun": {"command": "fake-adaptor", "args": [
                "run", "{{Task.Param.Frame}}", "{{Param.SceneFile}}", "{{Param.OutputDir}}"]}}},
        }],
    }
    (bundle / "template.yaml").write_text(yaml.safe_dump(template, sort_keys=False))
    (bundle / "parameter_values.yaml").write_text(yaml.safe_dump({"parameterValues": [
        {"name": "deadline:priority", "value": 77},
        {"name": "deadline:maxRetriesPerTask", "value": 4},
        {"name": "deadline:targetTaskRunStatus", "value": "READY"},
        {"name": "SceneFile", "value": str(scene)},
        {"name": "Frames", "value": "1-3"},
    ]}, sort_keys=False))
    (bundle / "asset_references.yaml").write_text(yaml.safe_dump({"assetReferences": {
        "inputs": {"directories": [], "filenames": [str(scene)]},
        "outputs": {"directories": [str(bundle / "output")]}}}))


@pytest.fixture(scope="module")
def farm(openjd_farm, tmp_path_factory):
    """The shared OpenJD farm, with the stand-in adaptor on its worker's PATH."""
    root = tmp_path_factory.mktemp("openjd-assets")
    adaptor = openjd_farm.bin / "fake-adaptor"
    shebang, rest = FAKE_ADAPTOR.split("\n", 1)
    adaptor.write_text(f"{shebang}\nFAKE_ADAPTOR_TRIES={shlex.quote(str(root / 'frame-2-tries'))}\n{rest}")
    adaptor.chmod(adaptor.stat().st_mode | stat.S_IXUSR)
    yield root, openjd_farm.env
    adaptor.unlink()


def status(env: dict, job: str) -> dict:
    return json.loads(run_farm("status", job, "--json", env=env).stdout)


def wait_done(env: dict, job: str) -> None:
    state = wait_job(env, job, ("done", "failed", "cancelled"), 180)
    assert state == "done", f"job {job} {state}: {run_farm('log', f'{job}:0', env=env, check=False).stdout[-3000:]}"


@pytest.mark.slow
def test_a_bundle_renders_by_its_artists_paths_after_they_are_moved_away(farm):
    root, env = farm
    artist = root / "artist"
    files = artist_files(artist)
    originals = [artist / "tex" / "wood.png", artist / "tex" / "sub" / "stone.png", artist / "notes" / "readme.txt"]
    proof_bundle(root / "bundle", artist, originals)

    job = json.loads(run_farm("submit", f"{root / 'bundle'}/", "--json", env=env).stdout)["id"]
    assert status(env, job)["state"] == "suspended"
    shutil.move(artist, root / "archived-elsewhere")  # gone from the artist's disk before it runs
    assert not artist.exists()
    run_farm("resume", job, env=env)
    wait_done(env, job)

    out = root / "download"
    run_farm("download", job, str(out), env=env, timeout=120)
    expected = [f"scene {sha(files[artist / 'shot' / 'scene.txt'])}"]
    expected += [f"{p} {sha(files[p])}" for p in originals]
    assert (out / "OutDir" / "out" / "proof.txt").read_text().splitlines() == expected
    settings = load_settings({**env}, cwd=root)
    from renderfarm.storage import open_storage

    storage = open_storage(settings)
    assert all(storage.head(f"assets/{sha(data)}") is not None for data in files.values())


@pytest.mark.slow
def test_a_dcc_submitters_bundle_runs_with_its_priority_and_retries(farm):
    root, env = farm
    scene = root / "dcc-artist" / "shots" / "sh010.fakedcc"
    scene.parent.mkdir(parents=True)
    scene.write_bytes(b"fake dcc scene\n")
    dcc_bundle(root / "dcc-bundle", scene)

    job = json.loads(run_farm("submit", f"{root / 'dcc-bundle'}/", "--json", env=env).stdout)["id"]
    first = status(env, job)
    assert (first["priority"], first["retries"]) == (77, 4)
    scene.unlink()  # the worker reads the uploaded copy
    wait_done(env, job)
    final = status(env, job)
    assert (final["priority"], final["retries"], final["state"]) == (77, 4, "done")
    tasks = json.loads(run_farm("tasks", job, "--json", env=env).stdout)
    assert [len(t["attempts"]) for t in tasks] == [1, 4, 1]  # the farm's default of 3 tries would fail it
    out = root / "dcc-download"
    run_farm("download", job, str(out), env=env, timeout=120)
    for frame in (1, 2, 3):
        text = (out / "OutputDir" / "output" / f"frame-{frame}.txt").read_text()
        assert text == f"frame {frame} of {sha(b'fake dcc scene' + bytes([10]))}\n"
    log = run_farm("log", f"{job}:0", env=env).stdout
    assert "fake-adaptor: daemon start" in log
