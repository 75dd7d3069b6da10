"""OpenJD job templates for the tests, and acting as an OpenJD-capable node of a SteppedFarm."""

from __future__ import annotations

import copy

from renderfarm.wire import Capabilities, Done, OpenJDSpec, OpenJDSubmitIntent, Started, Usage


def run(*args: str) -> dict:
    return {"actions": {"onRun": {"command": "echo", "args": list(args)}}}


# Two steps: a chunked render (frames 1-25 in chunks of 10) and a step with a combination
# expression that depends on it.
TWO_STEPS = {
    "specificationVersion": "jobtemplate-2023-09",
    "extensions": ["TASK_CHUNKING"],
    "name": "Two steps",
    "parameterDefinitions": [
        {"name": "Frames", "type": "STRING", "default": "1-25"},
        {"name": "Quality", "type": "INT", "default": 3, "minValue": 1, "maxValue": 10},
    ],
    "steps": [
        {"name": "Render",
         "parameterSpace": {"taskParameterDefinitions": [
             {"name": "Frame", "type": "CHUNK[INT]", "range": "{{Param.Frames}}",
              "chunks": {"defaultTaskCount": 10, "rangeConstraint": "CONTIGUOUS"}}]},
         "script": run("{{Task.Param.Frame}}")},
        {"name": "Sheet",
         "dependencies": [{"dependsOn": "Render"}],
         "parameterSpace": {"taskParameterDefinitions": [
             {"name": "Page", "type": "INT", "range": "1-10:2"},
             {"name": "Side", "type": "STRING", "range": ["left", "right"]},
             {"name": "Tile", "type": "INT", "range": [7, 8]}],
             "combination": "Page * (Side, Tile)"},
         "script": run("{{Task.Param.Page}}", "{{Task.Param.Side}}")},
    ],
}


def with_host(template: dict, step: int, **requirements) -> dict:
    """`template` with hostRequirements on one step."""
    t = copy.deepcopy(template)
    t["steps"][step]["hostRequirements"] = requirements
    return t


def spec(template: dict = TWO_STEPS, **fields) -> OpenJDSpec:
    return OpenJDSpec(name=fields.pop("name", "two"), owner="ana", template=template, **fields)


def submit(farm, template: dict = TWO_STEPS, **fields) -> str:
    reply = farm.ask(OpenJDSubmitIntent(request_id=farm.request_id(), job=spec(template, **fields)))
    assert reply.ok, reply
    return reply.job_id


OPENJD_NODE = Capabilities(renderers={"openjd": "2023-09"}, cores=8, memory_gib=16.0, os_family="linux",
                           cpu_arch="x86_64")


def beat(farm, caps: dict[str, Capabilities | None], tick: bool = True) -> None:
    """Each named node beats with its capabilities."""
    for name, c in caps.items():
        farm.nodes[name].beat(farm.manager.r, ttl=30.0, **({"capabilities": c} if c is not None else {}))
    if tick:
        farm.manager.tick()


def finish(farm, attempt_id: int) -> None:
    """Act as the attempt's node: it ran its OpenJD task to the end (nothing the manager checks)."""
    worker = next(w for a, w, _ in farm.attempts() if a == attempt_id)
    node = farm.nodes[worker]
    node.post(farm.manager.r, Started(worker=worker, attempt_id=attempt_id, elapsed=0.1))
    node.post(farm.manager.r, Done(worker=worker, attempt_id=attempt_id, outputs=(), usage=Usage(wall=1.0)))
    farm.manager.tick()


def queued_orders(farm, worker: str) -> list[dict]:
    """The task orders on a node's queue, opened as its worker would."""
    from rq import Queue
    from rq.serializers import JSONSerializer

    from renderfarm import keys

    queue = Queue(keys.queue_name(worker), connection=farm.manager.r, serializer=JSONSerializer)
    return [farm.nodes[worker].open(job.args[0]) for job in queue.get_jobs()]
