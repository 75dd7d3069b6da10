"""The worker's OpenJD runner on real processes and real openjd-sessions: warm environments,
progress and failure lines, cancel, timeout and the files a task writes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from renderfarm_worker.openjd_runner import OpenJDRunner
from renderfarm_worker.openjd_task import OpenJDOrder, OpenJDOrderError, Outcome


def template(steps: list[dict], parameters: list[dict] | None = None, **extra) -> dict:
    shaped = {"specificationVersion": "jobtemplate-2023-09", "name": "shot", "steps": steps, **extra}
    if parameters:
        shaped["parameterDefinitions"] = parameters
    return shaped


def bash_step(name: str, script: str, **action) -> dict:
    return {"name": name,
            "parameterSpace": {"taskParameterDefinitions": [
                {"name": "Frame", "type": "INT", "range": "1-10"}]},
            "script": {"actions": {"onRun": {"command": "bash", "args": ["-c", script], **action}}}}


def order(tmpl: dict, step: str, frame: int, **job_parameters: str) -> OpenJDOrder:
    return OpenJDOrder.parse({"template": tmpl, "job_parameters": job_parameters, "step": step,
                              "task_parameters": {"Frame": {"type": "INT", "value": str(frame)}}})


class Recorder:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.progress: list[float] = []
        self.status: list[str] = []
        self.seen = threading.Condition()

    def on_log(self, line: str) -> None:
        with self.seen:
            self.lines.append(line)
            self.seen.notify_all()

    def wait_for(self, text: str, timeout: float = 30) -> None:
        with self.seen:
            assert self.seen.wait_for(lambda: any(text == line for line in self.lines), timeout), \
                f"no line {text!r} in {self.lines}"

    def kwargs(self) -> dict:
        return {"on_log": self.on_log, "on_progress": self.progress.append,
                "on_status": self.status.append}


@pytest.fixture
def runner(tmp_path):
    runner = OpenJDRunner(tmp_path / "openjd")
    (tmp_path / "openjd").mkdir()
    yield runner
    runner.close(time_limit=0)


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for a parent that does not reap."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_job_and_step_environments_are_entered_once_for_consecutive_tasks(runner, tmp_path):
    counter = tmp_path / "counter"
    def env(name: str) -> dict:
        return {"name": name, "script": {"actions": {
            "onEnter": {"command": "bash", "args": ["-c", f"echo enter {name} >> {{{{Param.Counter}}}}"]},
            "onExit": {"command": "bash", "args": ["-c", f"echo exit {name} >> {{{{Param.Counter}}}}"]}}}}
    step = bash_step("render", "echo task {{Task.Param.Frame}} >> {{Param.Counter}}")
    step["stepEnvironments"] = [env("stepenv")]
    tmpl = template([step], [{"name": "Counter", "type": "STRING"}], jobEnvironments=[env("jobenv")])
    for frame in (1, 2):
        result = runner.run_task("job1", order(tmpl, "render", frame, Counter=str(counter)),
                                 **Recorder().kwargs())
        assert result.ok, result.message
        assert runner.session_key == ("job1", "render")
    assert counter.read_text().splitlines() == [
        "enter jobenv", "enter stepenv", "task 1", "task 2"]
    runner.close()
    assert counter.read_text().splitlines()[4:] == ["exit stepenv", "exit jobenv"]
    assert runner.session_key is None


def test_a_task_of_another_step_ends_the_warm_session_first(runner, tmp_path):
    counter = tmp_path / "counter"
    env = {"name": "env", "script": {"actions": {
        "onEnter": {"command": "bash", "args": ["-c", "echo enter >> {{Param.Counter}}"]},
        "onExit": {"command": "bash", "args": ["-c", "echo exit >> {{Param.Counter}}"]}}}}
    tmpl = template([bash_step("a", "true"), bash_step("b", "true")],
                    [{"name": "Counter", "type": "STRING"}], jobEnvironments=[env])
    for step in ("a", "a", "b"):
        assert runner.run_task("job1", order(tmpl, step, 1, Counter=str(counter)),
                               **Recorder().kwargs()).ok
    assert counter.read_text().splitlines() == ["enter", "exit", "enter"]
    assert runner.session_key == ("job1", "b")


def test_progress_status_and_fail_lines_reach_the_callbacks(runner):
    script = ("echo openjd_progress: 40; echo openjd_status: halfway there; echo frame {{Task.Param.Frame}}; "
              "if [ {{Task.Param.Frame}} = 2 ]; then echo 'openjd_fail: texture wood.png is missing'; exit 3; fi")
    tmpl = template([bash_step("render", script)])
    seen = Recorder()
    assert runner.run_task("job1", order(tmpl, "render", 1), **seen.kwargs()).ok
    assert seen.progress == [40.0] and seen.status == ["halfway there"]
    assert "frame 1" in seen.lines
    failed = runner.run_task("job1", order(tmpl, "render", 2), **Recorder().kwargs())
    assert failed.outcome is Outcome.FAILED
    assert failed.message == "texture wood.png is missing"
    assert failed.exit_code == 3
    assert runner.session_key is None  # a failure ends the session

    tmpl = template([bash_step("render", "exit 5")])
    failed = runner.run_task("job2", order(tmpl, "render", 1), **Recorder().kwargs())
    assert (failed.outcome, failed.message) == (Outcome.FAILED, "exit code 5")


def test_cancel_notifies_then_kills_the_whole_process_tree(runner, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    script = f"""
        trap 'echo TERM >> {marks}/term' TERM
        sleep 1000 & echo $! > {marks}/child
        setsid sleep 1000 & echo $! > {marks}/escaped
        echo $$ > {marks}/main
        echo ready
        while true; do sleep 0.1; done
    """
    tmpl = template([bash_step("render", script, cancelation={
        "mode": "NOTIFY_THEN_TERMINATE", "notifyPeriodInSeconds": 2})])
    seen = Recorder()
    results = []
    thread = threading.Thread(target=lambda: results.append(
        runner.run_task("job1", order(tmpl, "render", 1), **seen.kwargs())))
    thread.start()
    seen.wait_for("ready")
    pids = {name: int((marks / name).read_text()) for name in ("main", "child", "escaped")}
    assert all(alive(pid) for pid in pids.values())
    asked = time.monotonic()
    runner.cancel()
    thread.join(60)
    took = time.monotonic() - asked
    assert results and results[0].outcome is Outcome.CANCELED
    assert (marks / "term").read_text() == "TERM\n"  # it was told, and trapped it
    assert 1.9 <= took < 10, took  # killed after the notify period, not before
    assert any("still running after the action ended" in line for line in seen.lines)
    assert {name: alive(pid) for name, pid in pids.items()} == {
        "main": False, "child": False, "escaped": False}
    assert runner.session_key is None
    print(f"cancel to canceled: {took:.2f} s (notify period 2 s)")


def test_an_action_past_its_timeout_ends_as_timed_out(runner):
    tmpl = template([bash_step("render", "echo started; sleep 60", timeout=1)])
    began = time.monotonic()
    result = runner.run_task("job1", order(tmpl, "render", 1), **Recorder().kwargs())
    took = time.monotonic() - began
    assert result.outcome is Outcome.TIMED_OUT, result
    assert took < 20, took
    assert runner.session_key is None


def test_files_written_under_out_paths_are_listed_relative_to_params(runner):
    parameters = [
        {"name": "OutputDir", "type": "PATH", "objectType": "DIRECTORY", "dataFlow": "OUT"},
        {"name": "Scene", "type": "PATH", "objectType": "FILE", "dataFlow": "IN"},
    ]
    script = ("mkdir -p {{Param.OutputDir}}/sub && "
              "cat {{Param.Scene}} > {{Param.OutputDir}}/f.{{Task.Param.Frame}}.png && "
              "echo x > {{Param.OutputDir}}/sub/x.{{Task.Param.Frame}}.txt && "
              "echo scratch > $OPENJD_SESSION_WORKING_DIR/not-an-output")
    tmpl = template([bash_step("render", script)], parameters)
    staged = []

    def stage(params: Path) -> None:
        staged.append(params)
        (params / "Scene" / "scene.txt").write_text("pixels")

    values = {"OutputDir": "/home/artist/shot/renders", "Scene": "/home/artist/shot/scene.txt"}
    first = runner.run_task("job1", order(tmpl, "render", 1, **values), stage_inputs=stage,
                            **Recorder().kwargs())
    assert first.ok, first.message
    assert first.outputs == ["OutputDir/renders/f.1.png", "OutputDir/renders/sub/x.1.txt"]
    assert (first.output_root / first.outputs[0]).read_text() == "pixels"
    second = runner.run_task("job1", order(tmpl, "render", 2, **values), stage_inputs=stage,
                             **Recorder().kwargs())
    assert second.outputs == ["OutputDir/renders/f.2.png", "OutputDir/renders/sub/x.2.txt"]
    assert staged == [first.output_root, first.output_root]  # same warm session


def test_a_template_the_model_refuses_fails_the_task_with_the_reason(runner):
    tmpl = template([bash_step("render", "true")], [{"name": "N", "type": "INT", "maxValue": 3}])
    result = runner.run_task("job1", order(tmpl, "render", 1, N="9"), **Recorder().kwargs())
    assert result.outcome is Outcome.FAILED
    assert "N" in result.message and "3" in result.message
    with pytest.raises(OpenJDOrderError, match="openjd.step"):
        OpenJDOrder.parse({"template": tmpl, "step": 3})


def test_what_a_task_leaves_running_dies_with_it_and_an_environment_daemon_with_the_session(
        runner, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    daemon = f"setsid sleep 1000 > /dev/null 2>&1 & echo $! > {marks}/"
    env = {"name": "adaptor", "script": {"actions": {
        "onEnter": {"command": "bash", "args": ["-c", daemon + "env"]}}}}
    tmpl = template([bash_step("render", daemon + "task{{Task.Param.Frame}}")],
                    jobEnvironments=[env])
    for frame in (1, 2):
        assert runner.run_task("job1", order(tmpl, "render", frame), **Recorder().kwargs()).ok
        assert not alive(int((marks / f"task{frame}").read_text()))
    assert alive(int((marks / "env").read_text()))  # the warm environment's own process
    runner.close()
    assert not alive(int((marks / "env").read_text()))


def test_an_environment_that_fails_to_start_fails_the_task_and_ends_the_session(runner, tmp_path):
    counter = tmp_path / "counter"
    good = {"name": "good", "script": {"actions": {
        "onEnter": {"command": "bash", "args": ["-c", f"echo enter good >> {counter}"]},
        "onExit": {"command": "bash", "args": ["-c", f"echo exit good >> {counter}"]}}}}
    bad = {"name": "bad", "script": {"actions": {
        "onEnter": {"command": "bash", "args": ["-c", "exit 4"]},
        "onExit": {"command": "bash", "args": ["-c", f"echo exit bad >> {counter}"]}}}}
    tmpl = template([bash_step("render", f"echo task >> {counter}")], jobEnvironments=[good, bad])
    result = runner.run_task("job1", order(tmpl, "render", 1), **Recorder().kwargs())
    assert (result.outcome, result.message) == (
        Outcome.FAILED, "environment 'bad' did not start: exit code 4")
    # No task; both exit, in reverse (openjd-sessions exits an environment whose enter failed).
    assert counter.read_text().splitlines() == ["enter good", "exit bad", "exit good"]
    assert runner.session_key is None


def test_an_idle_session_is_ended_by_close_if_idle(runner, tmp_path):
    counter = tmp_path / "counter"
    env = {"name": "env", "script": {"actions": {
        "onExit": {"command": "bash", "args": ["-c", f"echo exit >> {counter}"]}}}}
    tmpl = template([bash_step("render", "true")], jobEnvironments=[env])
    assert runner.run_task("job1", order(tmpl, "render", 1), **Recorder().kwargs()).ok
    runner.close_if_idle(3600)
    assert runner.session_key == ("job1", "render") and not counter.exists()
    runner.close_if_idle(0)
    assert runner.session_key is None and counter.read_text() == "exit\n"
