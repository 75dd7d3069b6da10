"""The planner: exact task plans, their specs, the task cap, checked priority and chunk, slugs, job ids."""

from __future__ import annotations

import re

import pytest

from renderfarm.errors import FrameSpecError, InputError
from renderfarm.planning import TaskPlan, check_chunk, check_priority, new_job_id, plan_tasks, slug


def test_plan_chunks_across_gaps_in_spec_order():
    plans = plan_tasks("1-10,20-25,40", 4, 100)
    assert plans == [
        TaskPlan(0, (1, 2, 3, 4)),
        TaskPlan(1, (5, 6, 7, 8)),
        TaskPlan(2, (9, 10, 20, 21)),
        TaskPlan(3, (22, 23, 24, 25)),
        TaskPlan(4, (40,)),
    ]
    # Flamenco's frameChunker gives the same chunks for the same spec.
    assert [p.spec for p in plans] == ["1-4", "5-8", "9,10,20,21", "22-25", "40"]


@pytest.mark.parametrize(
    ("spec", "chunk", "expected"),
    [
        ("1", 1, [(0, (1,))]),
        ("1-3", 1, [(0, (1,)), (1, (2,)), (2, (3,))]),
        ("1-10", 10, [(0, tuple(range(1, 11)))]),
        ("1-10", 100, [(0, tuple(range(1, 11)))]),
        ("1-10x3", 2, [(0, (1, 4)), (1, (7, 10))]),
        ("-3-2", 4, [(0, (-3, -2, -1, 0)), (1, (1, 2))]),
        ("5,1,3", 2, [(0, (5, 1)), (1, (3,))]),  # spec order, not sorted
        ("1-4,3-6", 3, [(0, (1, 2, 3)), (1, (4, 5, 6))]),  # a frame named twice renders once
    ],
)
def test_plan_exact(spec, chunk, expected):
    assert [(p.index, p.frames) for p in plan_tasks(spec, chunk, 100)] == expected


@pytest.mark.parametrize(
    ("frames", "spec"),
    [
        ((7,), "7"),
        ((1, 2), "1,2"),
        ((1, 2, 3), "1-3"),
        ((1, 3, 5, 7), "1-7x2"),
        ((1, 2, 3, 7), "1-3,7"),
        ((-2, -1, 0, 1), "-2-1"),
        ((10, 20, 21, 22), "10,20-22"),
    ],
)
def test_task_plan_spec(frames, spec):
    plan = TaskPlan(0, frames)
    assert plan.spec == spec
    assert plan_tasks(spec, len(frames), 1)[0].frames == frames  # the spec reads back the same frames


def test_task_cap_counts_before_expanding():
    with pytest.raises(InputError) as e:
        plan_tasks("1-200", 1, 100)
    assert str(e.value) == "frames: '1-200' makes 200 tasks with chunk 1, over the limit of 100 (raise --chunk)"
    plans = plan_tasks("1-200", 2, 100)
    assert len(plans) == 100
    assert plans[-1] == TaskPlan(99, (199, 200))
    # Exactly at the limit passes; one over does not.
    assert len(plan_tasks("1-100", 1, 100)) == 100
    with pytest.raises(InputError, match="makes 101 tasks"):
        plan_tasks("1-101", 1, 100)


def test_task_cap_refuses_huge_specs_without_expanding():
    with pytest.raises(InputError) as e:
        plan_tasks("1-1000000000", 1, 100_000)
    assert str(e.value) == (
        "frames: '1-1000000000' makes 1,000,000,000 tasks with chunk 1, over the limit of 100,000 (raise --chunk)"
    )


def test_plan_refuses_bad_specs_and_chunks():
    with pytest.raises(FrameSpecError, match="runs backwards"):
        plan_tasks("10-1", 1, 100)
    with pytest.raises(InputError) as e:
        plan_tasks("1-10", 0, 100)
    assert str(e.value) == "chunk: 0 must be at least 1"
    with pytest.raises(InputError) as e:
        plan_tasks("1-10", -2, 100)
    assert str(e.value) == "chunk: -2 must be at least 1"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("lots", "priority: 'lots' is not a whole number from 0 to 100"),
        (-1, "priority: -1 is outside 0-100"),
        (101, "priority: 101 is outside 0-100"),
        ("101", "priority: 101 is outside 0-100"),
        (2.5, "priority: 2.5 is not a whole number from 0 to 100"),
        ("", "priority: '' is not a whole number from 0 to 100"),
        (None, "priority: None is not a whole number from 0 to 100"),
    ],
)
def test_check_priority_refuses(value, message):
    with pytest.raises(InputError) as e:
        check_priority(value)
    assert str(e.value) == message


@pytest.mark.parametrize(("value", "expected"), [("0", 0), (0, 0), (50, 50), ("100", 100), (" 7 ", 7)])
def test_check_priority_accepts(value, expected):
    assert check_priority(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("lots", "chunk: 'lots' is not a whole number"),
        (-1, "chunk: -1 must be at least 1"),
        ("0", "chunk: 0 must be at least 1"),
        (0, "chunk: 0 must be at least 1"),
        (1.5, "chunk: 1.5 is not a whole number"),
    ],
)
def test_check_chunk_refuses(value, message):
    with pytest.raises(InputError) as e:
        check_chunk(value)
    assert str(e.value) == message


@pytest.mark.parametrize(("value", "expected"), [(1, 1), ("1", 1), (101, 101), ("5000", 5000)])
def test_check_chunk_accepts(value, expected):
    assert check_chunk(value) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("orbit", "orbit"),
        ("Shot_010.v2", "Shot_010.v2"),
        ("my shot #1", "my-shot-1"),
        ("a/b\\c", "a-b-c"),
        ("../../etc/passwd", "etc-passwd"),
        ("  --hello--  ", "hello"),
        (".hidden", "hidden"),
        ("café au lait", "caf-au-lait"),
        ("x" * 150, "x" * 100),
    ],
)
def test_slug(text, expected):
    assert slug(text) == expected


@pytest.mark.parametrize(("text", "field"), [("", "name"), ("!!!", "owner"), ("..", "pool"), ("  ", "name")])
def test_slug_refuses_names_with_nothing_usable(text, field):
    with pytest.raises(InputError) as e:
        slug(text, field)
    assert str(e.value) == f"{field}: {text!r} has no usable characters (use letters, digits, '.', '_' or '-')"


def test_new_job_id_shape():
    ids = [new_job_id() for _ in range(200)]
    assert all(re.fullmatch(r"[0-9a-f]{8}", i) for i in ids), ids
    assert len(set(ids)) == len(ids)
    # An id is a valid job id for the manager: short and alphanumeric.
    assert all(i.isalnum() for i in ids)
