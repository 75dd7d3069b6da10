"""OpenJD outputs and inputs at the seam: the wire's bounds on an output's relative path, a
progress event's status text and an order's input files; the manager's own check of an OpenJD
attempt's files (read back, size and SHA-256, images decoded) before it promotes them; and the
worker's placing of an input below its session's params/ folder, never through a link."""

from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path

import pytest
from renderfarm_worker.openjd_inputs import target_of

from renderfarm import wire
from renderfarm.errors import RenderError, VerificationError
from renderfarm.manager.openjd_outputs import final_key, step_folder, verify_and_promote_files
from renderfarm.storage.files import FileStorage
from renderfarm.storage.keys import attempt_prefix
from renderfarm.wire import WireError

SHA = "ab" * 32
JOB = "1a2b3c4d"


def output(**fields) -> str:
    return json.dumps({"sha256": SHA, "size": 10, **fields})


@pytest.mark.parametrize("path", ["OutputDir/renders/f.0001.png", "a", "Dir/.hidden", "x/" * 15 + "y"])
def test_an_output_may_name_a_plain_relative_path(path):
    assert wire.Output.parse(output(path=path)).path == path


@pytest.mark.parametrize(("fields", "message"), [
    ({"path": "../etc/passwd"}, "'..'"),
    ({"path": "Out/../../x"}, "'..'"),
    ({"path": "/etc/passwd"}, "'/' first"),
    ({"path": "Out\\f.png"}, "backslash"),
    ({"path": "Out//f.png"}, "an empty"),
    ({"path": "Out/./f.png"}, "'.'"),
    ({"path": "Out/my render.png"}, "a character other than"),
    ({"path": "Out/f\x00.png"}, "a character other than"),
    ({"path": "a" * 401}, "at most 400"),
    ({"path": "x/" * 16 + "y"}, "17 parts deep"),
    ({"path": ""}, "at least 1"),
    ({"frame": 1, "path": "Out/f.png"}, "exactly one"),
    ({}, "exactly one"),
])
def test_an_output_path_outside_its_bounds_is_refused_naming_it(fields, message):
    with pytest.raises(WireError, match="output") as e:
        wire.Output.parse(output(**fields))
    assert message in str(e.value)


def test_a_progress_event_carries_a_bounded_status_line():
    doc = {"type": "progress", "worker": "node-01", "attempt_id": 12, "progress": 0.5}
    assert wire.parse_event(json.dumps({**doc, "status": "rendering frame 3"})).status == "rendering frame 3"
    assert wire.parse_event(json.dumps(doc)).status is None
    with pytest.raises(WireError, match="status"):
        wire.parse_event(json.dumps({**doc, "status": "x" * 201}))
    with pytest.raises(WireError, match="status"):
        wire.parse_event(json.dumps({**doc, "status": "two\nlines"}))


def an_order(inputs: list[dict]) -> str:
    return json.dumps({
        "kind": "openjd", "attempt_id": 12, "attempt": 1, "task_id": 99, "task_index": 7, "node": "node-01",
        "job_id": JOB, "name": "shot", "renderer": "openjd", "scene_key": f"scenes/{SHA}.json",
        "scene_sha256": SHA, "frames": [7], "width": 1, "height": 1, "timeout": 60.0,
        "openjd": {"template": {}, "step": "Sheet", "inputs": inputs},
    })


def test_an_order_carries_its_inputs_only_from_its_own_job():
    good = {"path": "FramesDir/frames/f.0001.png", "key": f"jobs/{JOB}/outputs/Render/FramesDir/frames/f.0001.png",
            "url": "http://127.0.0.1:8333/b/k?X-Amz-Signature=1", "size": 10, "sha256": SHA}
    order = wire.TaskOrder.parse(an_order([good]))
    assert order.openjd.inputs[0].path == good["path"]
    with pytest.raises(WireError, match="outside jobs/1a2b3c4d/"):
        wire.TaskOrder.parse(an_order([{**good, "key": "jobs/99999999/outputs/Render/f.png"}]))
    with pytest.raises(WireError, match="'..'"):
        wire.TaskOrder.parse(an_order([{**good, "path": "../../.ssh/authorized_keys"}]))


def test_the_worker_and_the_manager_accept_the_same_openjd_extensions():
    from renderfarm_worker.openjd_task import SUPPORTED_EXTENSIONS

    from renderfarm.openjd import EXTENSIONS

    assert tuple(SUPPORTED_EXTENSIONS) == tuple(EXTENSIONS)


def png(colour=(200, 10, 10)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def storage(tmp_path: Path) -> FileStorage:
    return FileStorage(tmp_path / "store", f"file://{tmp_path / 'store'}")


def uploaded(storage: FileStorage, files: dict[str, bytes], **lie) -> list[wire.Output]:
    prefix = attempt_prefix("node-01", JOB, 3, 1)
    outs = []
    for path, data in files.items():
        storage.put_bytes(f"{prefix}outputs/{path}", data)
        fields = {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), **lie}
        outs.append(wire.Output(**fields))
    return outs


def verify(storage, outputs, step="Render"):
    return verify_and_promote_files(storage, outputs, node="node-01", job_id=JOB, task_index=3, attempt=1,
                                    step=step)


def test_checked_files_are_promoted_under_the_job_by_step_and_path(storage):
    files = {"FramesDir/frames/f.0001.png": png(), "FramesDir/cache.bin": b"\x00\x01 any bytes"}
    leftovers, committed = verify(storage, uploaded(storage, files))
    assert sorted(c.path for c in committed) == sorted(files)
    for c in committed:
        assert c.key == f"jobs/{JOB}/outputs/Render/{c.path}"
        assert storage.get_bytes(c.key) == files[c.path]
    assert leftovers == [f"{attempt_prefix('node-01', JOB, 3, 1)}outputs/{p}" for p in files]


def test_a_file_that_is_not_what_the_node_reported_is_never_promoted(storage):
    outputs = uploaded(storage, {"Out/f.png": png(), "Out/g.png": png()}, size=5)
    with pytest.raises(VerificationError, match="do not match the reported size or SHA-256"):
        verify(storage, outputs)
    assert not list(storage.list(f"jobs/{JOB}/"))


def test_an_image_that_does_not_decode_fails_even_with_the_right_sha256(storage):
    from PIL import Image

    buffer = io.BytesIO()
    Image.frombytes("RGB", (64, 64), random.Random(1).randbytes(64 * 64 * 3)).save(buffer, format="PNG")
    broken = buffer.getvalue()[:200]  # cut inside its pixel data
    with pytest.raises(VerificationError, match="does not decode as PNG"):
        verify(storage, uploaded(storage, {"Out/f.png": broken}))
    with pytest.raises(VerificationError, match="not a JPEG"):
        verify(storage, uploaded(storage, {"Out/f.jpg": png()}))


def test_a_missing_file_or_a_frame_instead_of_a_path_is_refused(storage):
    with pytest.raises(VerificationError, match="missing from storage"):
        verify(storage, [wire.Output(path="Out/f.exr", sha256=SHA, size=3)])
    with pytest.raises(VerificationError, match="not frames"):
        verify(storage, [wire.Output(frame=1, sha256=SHA, size=3)])


def test_a_step_name_becomes_one_plain_key_part_and_two_names_never_meet():
    assert step_folder("Render") == "Render"
    assert step_folder("Contact sheet") != step_folder("Contact_sheet")
    assert "/" not in step_folder("a/../b") and ".." not in step_folder("a/../b").split("/")
    assert final_key(JOB, "Render", "Out/f.png") == f"jobs/{JOB}/outputs/Render/Out/f.png"


def test_an_input_is_placed_below_params_and_never_through_a_link(tmp_path: Path):
    params = tmp_path / "params"
    params.mkdir()
    assert target_of(params, "FramesDir/frames/f.0001.png") == params / "FramesDir/frames/f.0001.png"
    assert (params / "FramesDir/frames").is_dir()
    (params / "Linked").symlink_to(tmp_path)
    with pytest.raises(RenderError, match="not a folder"):
        target_of(params, "Linked/f.png")
    with pytest.raises(RenderError, match="is not a file name to write below"):
        target_of(params, "../f.png")
