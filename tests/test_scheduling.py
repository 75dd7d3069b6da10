"""pick_task, the farm's dispatch policy, on exact inputs."""

from __future__ import annotations

from renderfarm.scheduling import Candidate, WorkerView, pick_task

CPU = WorkerView("cpu-1")
GPU = WorkerView("gpu-1", pool="gpu")


def cand(task_id: int, job_id: str, index: int, priority: int = 50, submitted_at: float = 1000.0,
         pool: str = "default") -> Candidate:
    return Candidate(task_id, job_id, index, priority, submitted_at, pool)


def test_nothing_to_pick():
    assert pick_task(CPU, []) is None
    assert pick_task(CPU, iter([])) is None


def test_higher_priority_first_even_when_newer():
    old_low = cand(1, "aaaa0001", 0, priority=10, submitted_at=100.0)
    new_high = cand(2, "bbbb0002", 0, priority=90, submitted_at=900.0)
    mid = cand(3, "cccc0003", 0, priority=50, submitted_at=50.0)
    assert pick_task(CPU, [old_low, new_high, mid]) == new_high
    assert pick_task(CPU, [old_low, mid]) == mid
    assert pick_task(CPU, [old_low]) == old_low


def test_priority_bounds_order():
    zero = cand(1, "aaaa0001", 0, priority=0, submitted_at=1.0)
    hundred = cand(2, "bbbb0002", 0, priority=100, submitted_at=2.0)
    assert pick_task(CPU, [zero, hundred]) == hundred


def test_equal_priority_older_job_first():
    newer = cand(1, "aaaa0001", 0, submitted_at=2000.0)
    older = cand(2, "zzzz0002", 5, submitted_at=1000.0)
    assert pick_task(CPU, [newer, older]) == older
    assert pick_task(CPU, [older, newer]) == older


def test_same_job_lowest_task_index_first():
    tasks = [cand(10 + i, "aaaa0001", i) for i in (7, 3, 9, 4)]
    assert pick_task(CPU, tasks) == tasks[1]
    assert pick_task(CPU, tasks).task_index == 3


def test_ties_on_time_are_broken_by_job_id_deterministically():
    b = cand(1, "bbbb0002", 0, submitted_at=1000.0)
    a = cand(2, "aaaa0001", 3, submitted_at=1000.0)
    assert pick_task(CPU, [b, a]) == a
    assert pick_task(CPU, [a, b]) == a


def test_pools_filter_before_priority():
    default_urgent = cand(1, "aaaa0001", 0, priority=100)
    gpu_low = cand(2, "bbbb0002", 0, priority=1, pool="gpu")
    # A worker in pool "gpu" never gets a "default" task, however urgent, and the other way round.
    assert pick_task(GPU, [default_urgent, gpu_low]) == gpu_low
    assert pick_task(GPU, [default_urgent]) is None
    assert pick_task(CPU, [default_urgent, gpu_low]) == default_urgent
    assert pick_task(CPU, [gpu_low]) is None


def test_full_order_of_a_mixed_queue():
    queue = [
        cand(1, "job00003", 0, priority=50, submitted_at=300.0),
        cand(2, "job00001", 1, priority=50, submitted_at=100.0),
        cand(3, "job00002", 0, priority=80, submitted_at=200.0),
        cand(4, "job00001", 0, priority=50, submitted_at=100.0),
        cand(5, "job00004", 0, priority=99, submitted_at=400.0, pool="gpu"),
        cand(6, "job00002", 1, priority=80, submitted_at=200.0),
    ]
    order = []
    left = list(queue)
    while (choice := pick_task(CPU, left)) is not None:
        order.append(choice.task_id)
        left.remove(choice)
    assert order == [3, 6, 4, 2, 1]
    assert left == [queue[4]]  # only the gpu task is left for a default worker
    assert pick_task(GPU, left).task_id == 5


def test_does_not_change_its_input():
    queue = [cand(2, "bbbb0002", 0), cand(1, "aaaa0001", 0, priority=60)]
    before = list(queue)
    assert pick_task(CPU, queue).task_id == 1
    assert queue == before


def test_a_failed_task_goes_to_another_worker_first():
    failed_here = Candidate(1, "aaaa0001", 0, 90, 100.0, failed_on=frozenset({"cpu-1"}))
    other = cand(2, "bbbb0002", 0, priority=10)
    # Another live worker could take it: cpu-1 takes the lower-priority task instead.
    assert pick_task(CPU, [failed_here, other], peers={"cpu-1", "cpu-2"}) == other
    assert pick_task(WorkerView("cpu-2"), [failed_here, other], peers={"cpu-1", "cpu-2"}) == failed_here
    # No other live worker, or all others failed it too: cpu-1 may try again.
    assert pick_task(CPU, [failed_here, other], peers={"cpu-1"}) == failed_here
    both = Candidate(1, "aaaa0001", 0, 90, 100.0, failed_on=frozenset({"cpu-1", "cpu-2"}))
    assert pick_task(CPU, [both], peers={"cpu-1", "cpu-2"}) == both


def test_a_blocklisted_worker_gets_nothing_of_that_job():
    blocked = Candidate(1, "aaaa0001", 0, 90, 100.0, blocked=frozenset({"cpu-1"}))
    other = cand(2, "bbbb0002", 0, priority=10)
    peers = {"cpu-1", "cpu-2"}
    assert pick_task(CPU, [blocked, other], peers) == other
    assert pick_task(CPU, [blocked], peers) is None
    assert pick_task(WorkerView("cpu-2"), [blocked, other], peers) == blocked
    # When every live worker is blocklisted for the job, the blocklist no longer holds it up.
    everyone = Candidate(1, "aaaa0001", 0, 90, 100.0, blocked=frozenset({"cpu-1", "cpu-2"}))
    assert pick_task(CPU, [everyone], peers) == everyone
    assert pick_task(CPU, [blocked]) == blocked  # no peers known: nobody else could take it
    # A failed task whose only other peer is blocklisted comes back to this worker.
    failed = Candidate(3, "cccc0003", 0, 90, 100.0, failed_on=frozenset({"cpu-1"}), blocked=frozenset({"cpu-2"}))
    assert pick_task(CPU, [failed], peers={"cpu-1", "cpu-2"}) == failed


def test_equal_priorities_go_to_the_job_with_the_least_share():
    a = cand(1, "aaaa0001", 0, submitted_at=100.0)
    b = cand(2, "bbbb0002", 0, submitted_at=200.0)
    assert pick_task(CPU, [a, b], shares={"aaaa0001": 3.0, "bbbb0002": 1.0}) == b
    assert pick_task(CPU, [a, b], shares={"aaaa0001": 1.0, "bbbb0002": 1.0}) == a  # then the older job
    # Priority still comes first.
    urgent = cand(3, "cccc0003", 0, priority=80, submitted_at=300.0)
    assert pick_task(CPU, [a, b, urgent], shares={"cccc0003": 99.0}) == urgent


def test_max_workers_caps_the_workers_on_a_job():
    capped = Candidate(1, "aaaa0001", 0, 50, 100.0, max_workers=1)
    other = cand(2, "bbbb0002", 0, submitted_at=200.0)
    holders = {"aaaa0001": frozenset({"cpu-2"})}
    assert pick_task(CPU, [capped, other], holders=holders) == other
    assert pick_task(WorkerView("cpu-2"), [capped, other], holders=holders) == capped  # already holds it
    assert pick_task(CPU, [capped, other], holders={}) == capped


def test_first_last_tasks_come_first_within_a_job():
    middle = Candidate(1, "aaaa0001", 5, 50, 100.0, rank=0)
    first_in_order = Candidate(2, "aaaa0001", 0, 50, 100.0, rank=1)
    assert pick_task(CPU, [first_in_order, middle]) == middle


def test_fair_share_passes():
    from renderfarm.manager.dispatch import FairShare

    fair = FairShare()
    assert fair.view({"a"}) == {"a": 0.0}
    for _ in range(5):
        fair.charge("a")
    # A job joining starts level with the lowest of the others, not at zero.
    assert fair.view({"a", "b"}) == {"a": 5.0, "b": 5.0}
    fair.charge("b")
    assert fair.view({"a", "b"}) == {"a": 5.0, "b": 6.0}
    assert fair.view({"b"}) == {"b": 6.0}  # a finished: forgotten


# --- capabilities: required tags and renderers ----------------------------------------------


def test_a_job_needing_tags_goes_only_to_workers_with_all_of_them():
    needs_gpu = Candidate(1, "aaaa0001", 0, 90, 100.0, requires=frozenset({"gpu"}))
    needs_two = Candidate(2, "bbbb0002", 0, 80, 100.0, requires=frozenset({"gpu", "cuda12"}))
    plain = cand(3, "cccc0003", 0, priority=10)
    tagged = WorkerView("node-1", tags=frozenset({"gpu"}))
    both = WorkerView("node-2", tags=frozenset({"gpu", "cuda12", "big-ram"}))
    assert pick_task(CPU, [needs_gpu, needs_two, plain]) == plain
    assert pick_task(tagged, [needs_two, plain]) == plain
    assert pick_task(tagged, [needs_gpu, needs_two, plain]) == needs_gpu
    assert pick_task(both, [needs_two, plain]) == needs_two
    assert pick_task(CPU, [needs_gpu]) is None


def test_a_job_goes_only_to_workers_that_have_its_renderer():
    command = Candidate(1, "aaaa0001", 0, 90, 100.0, renderer="command")
    builtin = Candidate(2, "bbbb0002", 0, 10, 100.0, renderer="builtin")
    careful = WorkerView("node-1", renderers=frozenset({"builtin", "null"}))
    assert pick_task(careful, [command, builtin]) == builtin
    assert pick_task(WorkerView("node-2", renderers=frozenset({"builtin", "command"})), [command, builtin]) == command
    assert pick_task(CPU, [command, builtin]) == command  # a worker that did not say: anything


def test_unschedulable_names_what_no_live_worker_has():
    from renderfarm.scheduling import unschedulable

    gpu_node = WorkerView("node-1", tags=frozenset({"gpu"}), renderers=frozenset({"builtin", "null"}))
    far = WorkerView("node-2", site="karamay", renderers=frozenset({"builtin"}))
    workers = [CPU, gpu_node, far]
    assert unschedulable(workers, "default", None, "builtin", frozenset()) is None
    assert unschedulable(workers, "default", None, "builtin", frozenset({"gpu"})) is None
    assert unschedulable([], "default", None, "builtin", frozenset()) == "no live worker"
    assert unschedulable(workers, "lighting", None, "builtin", frozenset()) == "no live worker in pool 'lighting'"
    assert unschedulable(workers, "default", "shanghai", "builtin", frozenset()) == \
        "no live worker of pool 'default' at site 'shanghai'"
    assert unschedulable([CPU, far], "default", None, "builtin", frozenset({"gpu", "cuda12"})) == \
        "no live worker of pool 'default' has tag(s) cuda12, gpu"
    assert unschedulable([gpu_node, far], "default", None, "command", frozenset()) == \
        "no live worker of pool 'default' with the needed tags has the command renderer"


def test_tags_are_checked_and_sorted():
    import pytest

    from renderfarm.capabilities import check_tags
    from renderfarm.errors import InputError

    assert check_tags(None) == ()
    assert check_tags(["gpu", "CUDA12,big-ram", "gpu"]) == ("big-ram", "cuda12", "gpu")
    assert check_tags("a.b_c-d") == ("a.b_c-d",)
    for bad, shown in (("gpu!", "'gpu!'"), ("", "''"), ("-gpu", "'-gpu'"), ("x" * 33, repr("x" * 33))):
        with pytest.raises(InputError) as e:
            check_tags(["ok", bad])
        assert str(e.value) == f"require: {shown} is not a tag (letters, digits, '_', '.', '-'; up to 32)"
    with pytest.raises(InputError, match="at most 32"):
        check_tags([f"t{i}" for i in range(33)])


def test_capabilities_from_a_worker_are_checked_loosely():
    from renderfarm.capabilities import describe, parse_capabilities, worker_view

    sent = {"renderers": {"builtin": "0.1.0", "null": "0.1.0"}, "cores": 16, "memory_gib": 62.5,
            "gpu": "NVIDIA H100", "tags": ["gpu", "Not A Tag", 7], "junk": {"x": 1}}
    caps = parse_capabilities(sent)
    assert caps == {"renderers": {"builtin": "0.1.0", "null": "0.1.0"}, "cores": 16, "memory_gib": 62.5,
                    "gpu": "NVIDIA H100", "tags": ["gpu"]}
    assert parse_capabilities('{"tags": ["gpu"]}') == {"tags": ["gpu"]}
    assert parse_capabilities("not json") is None and parse_capabilities(None) is None
    view = worker_view("n1", "default", "local", sent)
    assert view.tags == frozenset({"gpu"}) and view.renderers == frozenset({"builtin", "null"})
    assert worker_view("n2", "default", "local", None).renderers is None
    assert describe(sent) == "builtin 0.1.0 null 0.1.0; 62.5 GiB; GPU NVIDIA H100; tags gpu"
    assert describe(None) == "-"
