"""OpenJD templates expanded into farm tasks (renderfarm.openjd, on openjd-model): exact task
counts and parameter values for ranges, combination expressions and CHUNK[INT]; deadline:*
values mapped onto the farm's settings; one-line errors naming the bad field."""

from __future__ import annotations

import copy
import json

import pytest
from openjdkit import TWO_STEPS, run, with_host

from renderfarm.errors import InputError
from renderfarm.openjd import bundle_values, expand, farm_values, parse_assignments
from renderfarm.scheduling import HostNeeds, WorkerView


def values(task) -> dict[str, str]:
    return {name: p["value"] for name, p in task.parameters.items()}


def test_steps_expand_in_dependency_order_into_chunks_and_combinations() -> None:
    e = expand(TWO_STEPS, {}, 1000)
    assert [s.name for s in e.steps] == ["Render", "Sheet"]
    render, sheet = e.steps
    assert render.after == () and sheet.after == ("Render",)
    assert [t.parameters for t in render.tasks] == [
        {"Frame": {"type": "CHUNK[INT]", "value": v}} for v in ("1-9", "10-17", "18-25")]
    # Page 1-10:2 is 1,3,5,7,9; (Side, Tile) moves together: 5 x 2 tasks, right-most fastest.
    assert [values(t) for t in sheet.tasks] == [
        {"Page": str(p), "Side": side, "Tile": tile} for p in (1, 3, 5, 7, 9)
        for side, tile in (("left", "7"), ("right", "8"))]
    assert e.task_count == 13
    assert e.job_parameters == {"Frames": "1-25", "Quality": "3"}


def test_a_range_with_a_step_and_a_product_count_every_task() -> None:
    t = {"specificationVersion": "jobtemplate-2023-09", "name": "grid", "steps": [{
        "name": "S", "script": run("x"),
        "parameterSpace": {"taskParameterDefinitions": [
            {"name": "F", "type": "INT", "range": "1-100:2"},
            {"name": "L", "type": "STRING", "range": ["a", "b", "c"]}]}}]}
    (step,) = expand(t, {}, 1000).steps
    assert len(step.tasks) == 150
    assert values(step.tasks[0]) == {"F": "1", "L": "a"} and values(step.tasks[-1]) == {"F": "99", "L": "c"}


def test_a_step_without_a_parameter_space_is_one_task_and_values_reach_the_range() -> None:
    t = copy.deepcopy(TWO_STEPS)
    t["steps"].append({"name": "Movie", "dependencies": [{"dependsOn": "Sheet"}], "script": run("m")})
    e = expand(t, {"Frames": "1-100"}, 1000)
    assert [len(s.tasks) for s in e.steps] == [10, 10, 1]
    assert e.steps[2].tasks[0].parameters == {} and e.steps[2].after == ("Sheet",)


def test_the_farm_task_cap_counts_every_step_before_expanding() -> None:
    with pytest.raises(InputError, match=r"^template: its steps make 13 tasks, over the farm's cap of 12$"):
        expand(TWO_STEPS, {}, 12)


@pytest.mark.parametrize("change, values_, message", [
    (lambda t: t["steps"][0]["script"]["actions"]["onRun"].update(comand="x"), {},
     "template: steps[0].script.actions.onRun.comand: Extra inputs are not permitted"),
    (lambda t: t["steps"][1].update(dependencies=[{"dependsOn": "Nope"}]), {},
     "template: step[1].dependencies[0].dependsOn: Unknown step 'Nope'"),
    (lambda t: t.pop("specificationVersion"), {},
     "template: Template is missing Open Job Description schema version key: specificationVersion"),
    (None, {"Quality": "11"}, "parameter: Value (11) for parameter Quality must be at most 10."),
    (None, {"Colour": "red"},
     "parameter: Job parameter values provided for parameters that are not defined in the template: Colour"),
])
def test_errors_are_one_line_naming_the_field(change, values_, message) -> None:
    t = copy.deepcopy(TWO_STEPS)
    if change:
        change(t)
    with pytest.raises(InputError) as e:
        expand(t, values_, 1000)
    assert str(e.value) == message


def test_deadline_values_map_onto_the_farms_settings_and_leave_the_templates_own() -> None:
    farm, mine = farm_values({"deadline:priority": "70", "deadline:maxRetriesPerTask": "5",
                              "deadline:maxFailedTasksCount": "20", "deadline:targetTaskRunStatus": "SUSPENDED",
                              "deadline:maxWorkerCount": "4", "deadline:somethingNew": "x", "Frames": "1-5"})
    assert mine == {"Frames": "1-5"}
    assert (farm.priority, farm.max_attempts, farm.max_failed_tasks, farm.suspended, farm.max_workers) == (
        70, 6, 20, True, 4)
    assert farm.ignored == ("deadline:somethingNew",)
    assert farm_values({})[0].suspended is False
    with pytest.raises(InputError, match=r"^deadline:priority: '101' is not a whole number from 0 to 100$"):
        farm_values({"deadline:priority": "101"})
    with pytest.raises(InputError, match=r"^deadline:targetTaskRunStatus: 'PAUSED' is not READY or SUSPENDED$"):
        farm_values({"deadline:targetTaskRunStatus": "paused"})


def test_bundle_values_and_assignments() -> None:
    doc = {"parameterValues": [{"name": "deadline:priority", "value": 60}, {"name": "Frames", "value": "1-3"}]}
    assert bundle_values(doc) == {"deadline:priority": "60", "Frames": "1-3"}
    assert parse_assignments(["Frames=1-3", "Note=a=b"]) == {"Frames": "1-3", "Note": "a=b"}
    with pytest.raises(InputError, match=r"^parameter: 'Frames' is not NAME=VALUE$"):
        parse_assignments(["Frames"])


def test_host_requirements_become_needs_a_worker_meets_or_names() -> None:
    t = with_host(TWO_STEPS, 0, amounts=[{"name": "amount.worker.vcpu", "min": 4},
                                         {"name": "amount.worker.memory", "min": 8192}],
                  attributes=[{"name": "attr.worker.os.family", "anyOf": ["linux", "macos"]},
                              {"name": "attr.studio.dcc", "allOf": ["maya", "nuke"]}])
    render, sheet = expand(t, {}, 1000).steps
    assert sheet.host is None
    needs = render.host
    assert needs == HostNeeds((("amount.worker.vcpu", 4.0, None), ("amount.worker.memory", 8192.0, None)),
                              (("attr.worker.os.family", ("linux", "macos"), False),
                               ("attr.studio.dcc", ("maya", "nuke"), True)))
    assert HostNeeds.from_dict(json.loads(json.dumps(needs.to_dict()))) == needs
    good = WorkerView("w", amounts=(("amount.worker.memory", 16384.0), ("amount.worker.vcpu", 8.0)),
                      attributes=(("attr.studio.dcc", ("maya", "nuke", "houdini")),
                                  ("attr.worker.os.family", ("linux",))))
    assert needs.unmet(good) is None
    small = WorkerView("s", amounts=(("amount.worker.memory", 16384.0), ("amount.worker.vcpu", 2.0)))
    assert needs.unmet(small) == "amount.worker.vcpu >= 4"
    no_nuke = WorkerView("n", amounts=good.amounts,
                         attributes=(("attr.studio.dcc", ("maya",)), ("attr.worker.os.family", ("linux",))))
    assert needs.unmet(no_nuke) == "attr.studio.dcc all of maya, nuke"


def test_a_worker_advertises_custom_attributes_that_host_requirements_match() -> None:
    from renderfarm_worker.capabilities import parse_attributes

    from renderfarm.capabilities import worker_view
    from renderfarm.errors import ConfigError

    attributes = parse_attributes("attr.studio.dcc=maya,nuke  deadline:attr.pool=gpu")
    assert attributes == {"attr.studio.dcc": ("maya", "nuke"), "deadline:attr.pool": ("gpu",)}
    view = worker_view("w", "default", "local", {"attributes": attributes, "os_family": "linux"})
    needs = HostNeeds(attributes=(("attr.studio.dcc", ("houdini", "nuke"), False),))
    assert needs.unmet(view) is None
    assert HostNeeds(attributes=(("attr.studio.dcc", ("houdini",), False),)).unmet(view) == (
        "attr.studio.dcc one of houdini")
    with pytest.raises(ConfigError, match=r"^FARM_OPENJD_ATTRIBUTES: 'dcc=maya' is not attr.NAME=VALUE"):
        parse_attributes("dcc=maya")


def writing(template: dict) -> dict:
    """`template` with a PATH parameter its tasks write under (dataFlow OUT)."""
    t = copy.deepcopy(template)
    t["parameterDefinitions"].append({"name": "OutDir", "type": "PATH", "dataFlow": "OUT", "default": "out"})
    return t


def test_a_step_whose_tasks_would_need_more_inputs_than_an_order_carries_is_refused() -> None:
    from renderfarm.openjd import check_inputs

    # Frames 1-10000 in chunks of 10: 1,000 Render tasks, each Sheet task handed a file of each.
    at_cap = expand(writing(TWO_STEPS), {"Frames": "1-10000"}, 10_000)
    check_inputs(at_cap, writing(TWO_STEPS), 0, 1000)
    with pytest.raises(InputError, match=r"^template: step 'Sheet' would need 1,003 inputs per task \(3 files "
                                         r"the job brings and a file from each of the 1,000 tasks of step "
                                         r"'Render'\), over the 1,000 a task may carry$"):
        check_inputs(at_cap, writing(TWO_STEPS), 3, 1000)
    over = expand(writing(TWO_STEPS), {"Frames": "1-10010"}, 10_000)
    with pytest.raises(InputError, match=r"^template: step 'Sheet' would need 1,001 inputs per task \(a file "
                                         r"from each of the 1,001 tasks of step 'Render'\)"):
        check_inputs(over, writing(TWO_STEPS), 0, 1000)
    # Tasks that write under no OUT parameter hand their dependents nothing but the job's files.
    check_inputs(expand(TWO_STEPS, {"Frames": "1-10010"}, 10_000), TWO_STEPS, 500, 1000)
