"""The wire contracts: every message round-trips through its one parse, and every bound is refused
with one error naming the field and the bad value."""

from __future__ import annotations

import json

import pytest
from openjdkit import TWO_STEPS

from renderfarm import wire
from renderfarm.errors import FrameSpecError, InputError
from renderfarm.wire import Limits, WireError

SHA = "ab" * 32
KEY = f"scenes/{SHA}.toml"

SPEC = {
    "name": "shot_010", "owner": "ana", "renderer": "builtin", "scene_name": "shot.toml", "scene_key": KEY,
    "scene_sha256": SHA, "frames": "1-48", "chunk": 4, "priority": 60, "pool": "gpu", "width": 640,
    "height": 360, "output_format": "exr", "timeout": 600.0, "max_workers": 8, "after": "1a2b3c4d",
    "first_last": True, "requires": ["gpu", "linux"],
}
ORDER = {
    "kind": "tile", "attempt_id": 12, "attempt": 2, "task_id": 99, "task_index": 7, "node": "node-01",
    "job_id": "1a2b3c4d",
    "name": "shot_010", "renderer": "builtin", "scene_key": KEY, "scene_sha256": SHA, "frames": [5],
    "format": "png", "width": 640, "height": 360, "timeout": 600.0,
    "region": {"x": 320, "y": 180, "width": 320, "height": 180},
}
OUTPUT = {"frame": 5, "sha256": SHA, "size": 1234, "etag": '"9b2cf535f27731c974343645a3985328"'}
USAGE = {"wall": 3.5, "cpu": 6.25, "site": "karamay", "watts": 350.0}
BEAT = {
    "name": "node-01", "host": "render01.studio", "pid": 4242, "pool": "gpu", "site": "karamay", "cores": 32,
    "version": "0.1.0", "uptime": 3600.5, "state": "busy", "task": "1a2b3c4d:7", "attempts": [12, 11],
    "ttl": 30.0, "seq": 1200,
    "capabilities": {"renderers": {"builtin": "0.1.0", "blender": "3.4.1"}, "tags": ["gpu"], "cores": 32,
                     "memory_gib": 125.5, "gpu": "NVIDIA A40"},
}

OPENJD_SPEC = {"name": "two-steps", "owner": "ana", "template": TWO_STEPS, "parameters": {"Quality": "4"},
               "priority": 60, "max_attempts": 3, "suspended": False, "max_workers": 4}
OPENJD_INPUT = {"path": "FramesDir/frames/f.0001.png", "key": "jobs/1a2b3c4d/outputs/Render/FramesDir/f.0001.png",
                "url": "http://127.0.0.1:8333/farm/jobs/1a2b3c4d/outputs/x?X-Amz-Signature=ab", "size": 1234,
                "sha256": SHA}
OPENJD_TASK = {"template": TWO_STEPS, "job_parameters": {"Frames": "1-25", "Quality": "4"}, "step": "Sheet",
               "task_parameters": {"Page": {"type": "INT", "value": "3"}, "Side": {"type": "STRING", "value": "left"}},
               "inputs": [OPENJD_INPUT]}

EXAMPLES = [
    (wire.JobSpec, SPEC),
    (wire.SubmitIntent, {"type": "submit", "request_id": "f" * 32, "job": SPEC}),
    (wire.CancelIntent, {"type": "cancel", "request_id": "0" * 32, "job": "1a2b3c4d"}),
    (wire.SuspendIntent, {"type": "suspend", "request_id": "1" * 32, "job": "1a2b3c4d", "kill": True}),
    (wire.ResumeIntent, {"type": "resume", "request_id": "2" * 32, "job": "1a2b3c4d"}),
    (wire.RetryIntent, {"type": "retry", "request_id": "3" * 32, "job": "1a2b3c4d", "all": True}),
    (wire.PriorityIntent, {"type": "priority", "request_id": "4" * 32, "job": "1a2b3c4d", "priority": 90}),
    (wire.Reply, {"ok": True, "job_id": "1a2b3c4d", "state": "running", "priority": 90, "changed": False}),
    (wire.TaskOrder, ORDER),
    (wire.TaskOrder, {**ORDER, "kind": "assemble", "region": None, "grid": "2x2",
                      "tile_keys": [f"jobs/1a2b3c4d/tiles/shot_010.0005/{i}.png" for i in range(4)]}),
    (wire.Heartbeat, BEAT),
    (wire.Started, {"type": "started", "worker": "node-01", "attempt_id": 12, "elapsed": 1.0}),
    (wire.Progress, {"type": "progress", "worker": "node-01", "attempt_id": 12, "progress": 0.25}),
    (wire.Done, {"type": "done", "worker": "node-01", "attempt_id": 12, "outputs": [OUTPUT],
                 "log_key": "jobs/1a2b3c4d/attempts/7/2/log.txt", "usage": USAGE}),
    (wire.Failed, {"type": "failed", "worker": "node-01", "attempt_id": 12, "error": "exited with status 1",
                   "usage": USAGE, "bad_tiles": [0, 3]}),
    (wire.Released, {"type": "released", "worker": "node-01", "attempt_id": 12, "reason": "worker stopping"}),
    (wire.Refused, {"type": "refused", "worker": "node-01", "rq_id": "attempt-12", "reason": "not JSON",
                    "raw": "\x80"}),
    (wire.Bye, {"type": "bye", "worker": "node-01"}),
    (wire.DeadLetter, {"source": "farm:events", "entry": "1-0", "reason": "bad", "raw": "{", "at": 1.5,
                       "worker": "node-01", "deliveries": 3}),
    (wire.SetIntent, {"type": "set", "request_id": "5" * 32, "job": "1a2b3c4d", "timeout": 600.0, "max_workers": 0,
                      "pool": "gpu", "requires": ["gpu"], "retries": 2}),
    (wire.TaskIntent, {"type": "task", "request_id": "6" * 32, "job": "1a2b3c4d", "action": "kill", "tasks": [0, 7]}),
    (wire.TaskIntent, {"type": "task", "request_id": "6" * 32, "job": "1a2b3c4d", "action": "skip", "frames": "3-4"}),
    (wire.DeleteIntent, {"type": "delete", "request_id": "7" * 32, "job": "1a2b3c4d", "cancel": True,
                         "keep_frames": True}),
    (wire.ArchiveIntent, {"type": "archive", "request_id": "8" * 32, "job": "1a2b3c4d"}),
    (wire.NodeAddIntent, {"type": "node-add", "request_id": "9" * 32, "name": "node-01", "site": "karamay",
                          "pool": "gpu", "tags": ["gpu"]}),
    (wire.NodeRevokeIntent, {"type": "node-revoke", "request_id": "a" * 32, "name": "node-01"}),
    (wire.WorkerHoldIntent, {"type": "worker", "request_id": "b" * 32, "name": "node-01", "hold": "drain"}),
    (wire.Reply, {"ok": True, "node": {"name": "node-01", "node_id": "n0123abcd", "key": "k" * 32,
                                       "redis_user": "node-01", "redis_password": "p" * 16}, "tasks": [1, 2]}),
    (wire.Sealed, {"node": "node-01", "seq": 5, "body": '{"type": "bye", "worker": "node-01"}', "mac": "c" * 64}),
    (wire.SleepOrder, {"order": "sleep", "node": "node-01", "seq": 1796535843235, "idle": 600.5}),
    (wire.OpenJDSpec, OPENJD_SPEC),
    (wire.OpenJDSubmitIntent, {"type": "submit_openjd", "request_id": "c" * 32, "job": OPENJD_SPEC}),
    (wire.OpenJDInput, OPENJD_INPUT),
    (wire.OpenJDAsset, {"path": "asset-roots/0/tex/wood.png", "size": 9, "sha256": SHA}),
    (wire.OpenJDPathMapping, {"source": "/mnt/shows/sh010/tex", "path": "asset-roots/0"}),
    (wire.OpenJDTask, OPENJD_TASK),
    (wire.TaskOrder, {**ORDER, "kind": "openjd", "region": None, "renderer": "openjd", "frames": [3],
                      "openjd": OPENJD_TASK}),
]


@pytest.mark.parametrize(("kind", "doc"), EXAMPLES, ids=[f"{k.__name__}-{i}" for i, (k, _) in enumerate(EXAMPLES)])
def test_every_message_round_trips(kind, doc):
    message = kind.parse(json.dumps(doc))
    assert kind.parse(message.to_json()) == message
    assert kind.parse(message.to_json().encode()) == message
    if hasattr(message, "type") and kind in wire.Intent.__args__:
        assert wire.parse_intent(message.to_json()) == message
    if kind in wire.Event.__args__:
        assert wire.parse_event(message.to_json()) == message


def test_every_message_class_has_an_example():
    """A message class added to the wire without an example here would go untested."""
    nested = {wire.Box, wire.Capabilities, wire.Output, wire.Usage, wire.RenderOptions, wire.NodeGrant}
    classes = {c for c in map(wire.__dict__.get, wire.__all__)
               if isinstance(c, type) and issubclass(c, wire.Message) and c is not wire.Message}
    assert classes - nested - {kind for kind, _ in EXAMPLES} == set()


def test_a_task_order_names_its_paths_and_keys_from_checked_values():
    order = wire.TaskOrder.parse(json.dumps(ORDER))
    assert (order.label, order.prefix) == ("1a2b3c4d:7/2", "nodes/node-01/jobs/1a2b3c4d/7/2/")
    assert order.output_key(5) == "nodes/node-01/jobs/1a2b3c4d/7/2/shot_010.0005.png"
    assert order.render_region.width == 320


def doc_with(doc: dict, path: str, value) -> dict:
    """`doc` with the field at `path` (dots for nesting) set to `value` (or removed, for ...)."""
    out = json.loads(json.dumps(doc))
    *parents, last = path.split(".")
    here = out
    for part in parents:
        here = here[part]
    if value is ...:
        del here[last]
    else:
        here[last] = value
    return out


BAD = [
    # (class, example, field, bad value, what the one error line says)
    (wire.JobSpec, SPEC, "max_workers", 99999999999999999999999,
     "submission: max_workers: 99999999999999999999999 should be less than or equal to 10000"),
    (wire.JobSpec, SPEC, "max_workers", 1e30, "submission: max_workers: 1e+30 should be a valid integer"),
    (wire.JobSpec, SPEC, "max_workers", 0, "submission: max_workers: 0 should be greater than or equal to 1"),
    (wire.JobSpec, SPEC, "priority", 101, "submission: priority: 101 should be less than or equal to 100"),
    (wire.JobSpec, SPEC, "priority", "5", "submission: priority: '5' should be a valid integer"),
    (wire.JobSpec, SPEC, "chunk", 0, "submission: chunk: 0 should be greater than or equal to 1"),
    (wire.JobSpec, SPEC, "chunk", 2**63, "submission: chunk: 9223372036854775808 should be less than or equal to"),
    (wire.JobSpec, SPEC, "requires", 5, "submission: requires: 5 should be a valid array"),
    (wire.JobSpec, SPEC, "requires", ["GPU!"], "submission: requires.0: 'GPU!' should match pattern"),
    (wire.JobSpec, SPEC, "width", 0, "submission: width: 0 should be greater than or equal to 1"),
    (wire.JobSpec, SPEC, "height", 65537, "submission: height: 65537 should be less than or equal to 65536"),
    (wire.JobSpec, SPEC, "timeout", 0.5, "submission: timeout: 0.5 should be greater than or equal to 1"),
    (wire.JobSpec, SPEC, "timeout", 1e308, "submission: timeout: 1e+308 should be less than or equal to 604800"),
    (wire.JobSpec, SPEC, "name", "../../etc", "submission: name: '../../etc' should match pattern"),
    (wire.JobSpec, SPEC, "name", "..", "submission: name: '..' should match pattern"),
    (wire.JobSpec, SPEC, "owner", "x" * 65, "submission: owner: 'xxxxxxxxxx"),
    (wire.JobSpec, SPEC, "pool", "a/b", "submission: pool: 'a/b' should match pattern"),
    (wire.JobSpec, SPEC, "scene_sha256", "../x", "submission: scene_sha256: '../x' should match pattern"),
    (wire.JobSpec, SPEC, "scene_key", "scenes/../etc/passwd", "submission: scene_key: 'scenes/../etc/passwd'"),
    (wire.JobSpec, SPEC, "frames", "x" * 5000, "submission: frames: 'xxxxxxxx"),
    (wire.JobSpec, SPEC, "output_format", "gif", "submission: output_format: 'gif' should be 'png', 'png16' or 'exr'"),
    (wire.JobSpec, SPEC, "after", "../x", "submission: after: '../x' should match pattern"),
    (wire.JobSpec, SPEC, "prefer", "soonest", "submission: prefer: 'soonest' should be 'cheapest', 'greenest' or 'fastest'"),
    (wire.JobSpec, SPEC, "first_last", 1, "submission: first_last: 1 should be a valid boolean"),
    (wire.JobSpec, SPEC, "name", ..., "submission: name: missing"),
    (wire.JobSpec, SPEC, "colour", "red", "submission: colour: not a field of this message"),
    (wire.CancelIntent, EXAMPLES[2][1], "job", "1a2b3c4d/../x", "intent cancel: job: '1a2b3c4d/../x' should match"),
    (wire.CancelIntent, EXAMPLES[2][1], "request_id", "x", "intent cancel: request_id: 'x' should match pattern"),
    (wire.PriorityIntent, EXAMPLES[6][1], "priority", -1,
     "intent priority: priority: -1 should be greater than or equal to 0"),
    (wire.TaskOrder, ORDER, "job_id", "../../..", "task order: job_id: '../../..' should match pattern"),
    (wire.TaskOrder, ORDER, "name", "../../x", "task order: name: '../../x' should match pattern"),
    (wire.TaskOrder, ORDER, "scene_sha256", "../" + "a" * 61, "task order: scene_sha256: '../aaaa"),
    (wire.TaskOrder, ORDER, "attempt_id", 0, "task order: attempt_id: 0 should be greater than or equal to 1"),
    (wire.TaskOrder, ORDER, "attempt_id", 2**63, "task order: attempt_id: 9223372036854775808 should be less"),
    (wire.TaskOrder, ORDER, "frames", [], "task order: frames: [] should have at least 1 item"),
    (wire.TaskOrder, ORDER, "frames", list(range(10_001)), "task order: frames: [0,1,2,3,4,5"),
    (wire.TaskOrder, ORDER, "frames", [2_000_000_000], "task order: frames.0: 2000000000 should be less than"),
    (wire.TaskOrder, ORDER, "region.x", -1, "task order: region.x: -1 should be greater than or equal to 0"),
    (wire.TaskOrder, ORDER, "region.width", 400, "task order: region 320,180 400x180 is outside the 640x360 frame"),
    (wire.TaskOrder, ORDER, "timeout", 0, "task order: timeout: 0 should be greater than or equal to 1"),
    (wire.TaskOrder, ORDER, "v", 1, "task order: v: 1 should be 2"),
    (wire.TaskOrder, ORDER, "region", None, "task order: a tile task names one frame and its region"),
    (wire.Heartbeat, BEAT, "pid", "x", "heartbeat: pid: 'x' should be a valid integer"),
    (wire.Heartbeat, BEAT, "name", "../evil", "heartbeat: name: '../evil' should match pattern"),
    (wire.Heartbeat, BEAT, "ttl", 1e9, "heartbeat: ttl: 1000000000.0 should be less than or equal to 3600"),
    (wire.Heartbeat, BEAT, "attempts", list(range(1, 18)), "heartbeat: attempts: [1,2,3"),
    (wire.Heartbeat, BEAT, "seq", -1, "heartbeat: seq: -1 should be greater than or equal to 0"),
    (wire.Heartbeat, BEAT, "capabilities.cores", 0, "heartbeat: capabilities.cores: 0 should be greater"),
    (wire.Heartbeat, BEAT, "state", "napping", "heartbeat: state: 'napping' should be 'idle', 'busy', 'stopping' or 'asleep'"),
    (wire.Progress, EXAMPLES[12][1], "attempt_id", 1e30, "event progress: attempt_id: 1e+30 should be a valid integer"),
    (wire.Progress, EXAMPLES[12][1], "progress", "abc", "event progress: progress: 'abc' should be a valid number"),
    (wire.Progress, EXAMPLES[12][1], "progress", 1.5, "event progress: progress: 1.5 should be less than or equal"),
    (wire.Started, EXAMPLES[11][1], "ts", "x", "event started: ts: not a field of this message"),
    (wire.Done, EXAMPLES[13][1], "outputs", 5, "event done: outputs: 5 should be a valid array"),
    (wire.Done, EXAMPLES[13][1], "usage.wall", 1e308, "event done: usage.wall: 1e+308 should be less than or equal"),
    (wire.Done, EXAMPLES[13][1], "log_key", "jobs/../../x", "event done: log_key: 'jobs/../../x' is not a storage key"),
    (wire.Done, EXAMPLES[13][1], "outputs", [{**OUTPUT, "size": 0}],
     "event done: outputs.0.size: 0 should be greater than or equal to 1"),
    (wire.Failed, EXAMPLES[14][1], "error", "e" * 4001, "event failed: error: 'eeee"),
    (wire.Failed, EXAMPLES[14][1], "bad_tiles", [4096], "event failed: bad_tiles.0: 4096 should be less than 4096"),
    (wire.Bye, EXAMPLES[17][1], "worker", "a" * 65, "event bye: worker: 'aaaa"),
    (wire.SetIntent, EXAMPLES[19][1], "max_workers", 10_001, "intent set: max_workers: 10001 should be less than"),
    (wire.SetIntent, EXAMPLES[19][1], "timeout", 0, "intent set: timeout: 0 should be greater than or equal to 1"),
    (wire.SetIntent, EXAMPLES[19][1], "retries", 101, "intent set: retries: 101 should be less than or equal to 100"),
    (wire.SetIntent, EXAMPLES[19][1], "pool", "../x", "intent set: pool: '../x' should match pattern"),
    (wire.TaskIntent, EXAMPLES[20][1], "action", "eat", "intent task: action: 'eat' should be 'kill', 'retry' or"),
    (wire.TaskIntent, EXAMPLES[20][1], "tasks", [-1], "intent task: tasks.0: -1 should be greater than or equal"),
    (wire.TaskIntent, EXAMPLES[20][1], "tasks", list(range(10_001)), "intent task: tasks: [0,1,2"),
    (wire.TaskIntent, EXAMPLES[21][1], "frames", "x" * 4097, "intent task: frames: 'xxxx"),
    (wire.DeleteIntent, EXAMPLES[22][1], "job", "../x", "intent delete: job: '../x' should match pattern"),
    (wire.DeleteIntent, EXAMPLES[22][1], "cancel", "yes", "intent delete: cancel: 'yes' should be a valid boolean"),
    (wire.ArchiveIntent, EXAMPLES[23][1], "job", "ZZZZ", "intent archive: job: 'ZZZZ' should match pattern"),
    (wire.NodeAddIntent, EXAMPLES[24][1], "name", "../evil", "intent node-add: name: '../evil' should match pattern"),
    (wire.NodeAddIntent, EXAMPLES[24][1], "tags", ["t"] * 33, 'intent node-add: tags: ["t","t"'),
    (wire.NodeRevokeIntent, EXAMPLES[25][1], "name", "a" * 65, "intent node-revoke: name: 'aaaa"),
    (wire.WorkerHoldIntent, EXAMPLES[26][1], "hold", "sleep", "intent worker: hold: 'sleep' should be 'drain', "),
    (wire.Reply, EXAMPLES[27][1], "node.node_id", "../x", "reply: node.node_id: '../x' should match pattern"),
    (wire.Reply, EXAMPLES[27][1], "node.redis_password", "short", "reply: node.redis_password: 'short' should have at"),
    (wire.Reply, EXAMPLES[27][1], "priority", 101, "reply: priority: 101 should be less than or equal to 100"),
    (wire.Sealed, EXAMPLES[28][1], "seq", 0, "sealed message: seq: 0 should be greater than or equal to 1"),
    (wire.Sealed, EXAMPLES[28][1], "seq", 2**63, "sealed message: seq: 9223372036854775808 should be less than"),
    (wire.Sealed, EXAMPLES[28][1], "mac", "../x", "sealed message: mac: '../x' should match pattern"),
    (wire.Sealed, EXAMPLES[28][1], "node", "../x", "sealed message: node: '../x' should match pattern"),
    (wire.SleepOrder, EXAMPLES[29][1], "order", "task", "sleep order: order: 'task' should be 'sleep'"),
    (wire.SleepOrder, EXAMPLES[29][1], "node", "../x", "sleep order: node: '../x' should match pattern"),
    (wire.SleepOrder, EXAMPLES[29][1], "seq", 0, "sleep order: seq: 0 should be greater than or equal to 1"),
    (wire.SleepOrder, EXAMPLES[29][1], "idle", 1e10, "sleep order: idle: 10000000000.0 should be less than"),
    (wire.OpenJDSpec, OPENJD_SPEC, "priority", 101, "submission: priority: 101 should be less than or equal to 100"),
    (wire.OpenJDInput, OPENJD_INPUT, "path", "../x.png", "openjd input: path: "),
    (wire.OpenJDInput, OPENJD_INPUT, "sha256", "z" * 64, "openjd input: sha256: "),
    (wire.OpenJDTask, OPENJD_TASK, "step", "", "openjd task: step: '' should have at least 1 character"),
    (wire.OpenJDTask, OPENJD_TASK, "task_parameters.Page.type", "BOOL", "openjd task: task_parameters.Page.type: "),
]


@pytest.mark.parametrize(("kind", "doc", "field", "value", "message"), BAD,
                         ids=[f"{k.__name__}.{f}={str(v)[:12]}" for k, _d, f, v, _m in BAD])
def test_each_bound_is_refused_naming_the_field(kind, doc, field, value, message):
    with pytest.raises(WireError) as refused:
        kind.parse(json.dumps(doc_with(doc, field, value)))
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "raw",
    ["not json", "[1]", "null", "5", '{"type": "progress"}', "[" * 10_000 + "]" * 10_000, b"\xff\xfe",
     '{"type": "zzz"}', '{"type": 5}', "{}"],
)
def test_any_stream_entry_that_is_not_a_message_is_one_wire_error(raw):
    with pytest.raises(WireError) as refused:
        wire.parse_event(raw)
    assert str(refused.value).startswith("event")
    with pytest.raises(WireError) as refused:
        wire.parse_intent(raw)
    assert str(refused.value).startswith("intent")


def test_a_message_over_its_size_is_refused_before_it_is_decoded():
    huge = json.dumps({"type": "bye", "worker": "w", "pad": "x" * (3 << 20)})
    with pytest.raises(WireError, match=r"event: 3,145,\d+ bytes, over the limit of 2,097,152"):
        wire.parse_event(huge)
    with pytest.raises(WireError, match="heartbeat: .* bytes, over the limit of 16,384"):
        wire.Heartbeat.parse(json.dumps({**BEAT, "host": "h" * 20_000}))


def test_the_farms_caps_are_checked_by_the_same_parse_on_both_ends():
    raw = json.dumps({**SPEC, "chunk": 1000, "frames": "1-10000000"})
    with pytest.raises(InputError, match=r"chunk: 1000 frames a task is over the farm's cap of 500 "
                                         r"\(set FARM_MAX_TASK_FRAMES or max_task_frames in farm.toml to raise it\)"):
        wire.JobSpec.parse(raw, limits=Limits(max_task_frames=500))
    with pytest.raises(InputError, match=r"frames: '1-10000000' makes 10,000 tasks with chunk 1000, over the limit "
                                         r"of 5,000"):
        wire.JobSpec.parse(raw, limits=Limits(max_tasks=5000))
    with pytest.raises(InputError, match=r"resolution: 640x360 is 230400 pixels a frame, over the farm's cap of "
                                         r"100000 \(set FARM_MAX_PIXELS"):
        wire.JobSpec.parse(json.dumps(SPEC), limits=Limits(max_pixels=100_000))
    blender = {**SPEC, "renderer": "blender", "output_format": "png", "scene_key": f"scenes/{SHA}.zip",
               "render_options": {"samples": 1_000_000}}
    with pytest.raises(InputError, match=r"samples: 1000000 is over the farm's cap of 65536 samples per pixel "
                                         r"\(set FARM_MAX_SAMPLES"):
        wire.JobSpec.parse(json.dumps(blender))
    with pytest.raises(FrameSpecError, match="holds negative frames"):
        wire.JobSpec.parse(json.dumps({**blender, "render_options": None, "frames": "-3-1"}))
    with pytest.raises(InputError, match="samples: the builtin renderer does not take --samples"):
        wire.JobSpec.parse(json.dumps({**SPEC, "render_options": {"samples": 4}}))
    with pytest.raises(InputError, match=r"site: 'hami' is not a configured site \(karamay\)"):
        wire.JobSpec.parse(json.dumps({**SPEC, "site": "hami"}), limits=Limits(sites=frozenset({"karamay"})))
    with pytest.raises(InputError, match="scene_key: .* is not the key of scene abababababab"):
        wire.JobSpec.parse(json.dumps({**SPEC, "scene_key": f"scenes/{'cd' * 32}.toml"}))


def test_the_cli_and_the_manager_share_one_submission_check():
    """No second checker: the CLI's check returns the very class the manager parses."""
    import inspect

    from renderfarm import client
    from renderfarm.manager import submission

    assert "JobSpec.parse" in inspect.getsource(client.check_submission)
    assert not hasattr(submission, "render_options") and "InputError(f\"resolution" not in inspect.getsource(submission)
    assert not hasattr(client, "check_chunk") and not hasattr(client, "check_priority")


@pytest.mark.parametrize(("name", "value", "says"), [
    ("Quality", "11", "parameter: Value (11) for parameter Quality must be at most 10."),
    ("Nope", "1", "parameter: Job parameter values provided for parameters that are not defined in the template: Nope"),
])
def test_an_openjd_parameter_outside_the_template_is_one_input_error(name, value, says):
    """The template's own checks (openjd-model's) run in the same parse, at both ends."""
    with pytest.raises(InputError) as refused:
        wire.OpenJDSpec.parse(json.dumps({**OPENJD_SPEC, "parameters": {name: value}}))
    assert str(refused.value) == says
