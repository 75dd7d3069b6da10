"""Runs the tasks of Open Job Description steps on a worker, in warm openjd-sessions sessions.

One warm session per (job id, step name): the job's environments, then the step's, are entered
when the first task of that job and step arrives, stay entered across the consecutive tasks of
that step on this worker, and are exited, in reverse, when the session ends: a task of another
job or step arrives, the session sits idle (`close_if_idle`), the worker closes the runner, or an
action inside the session fails, is canceled or times out (the specification's sessions are
brittle: after a failure only the environments' exits may run).

Directories (the runner's root is a folder of the worker's scratch dir):

    <root>/<job>-<step>-<random>/        one warm session's own folder, deleted when it ends
        params/<Name>[/<leaf>]           each PATH job parameter (see openjd_layout): Param.<Name>
                                         is this local path; absolute submitted paths also get a
                                         path mapping rule to it
        <8 random>/                      Session.WorkingDirectory, made by openjd-sessions
            embedded_files*/             the template's embedded files

A task's outputs are the files created or changed during its action under the PATH parameters
whose dataFlow is OUT or INOUT, listed relative to `params/` (`OutputDir/renders/f.0001.png`).

With a render user (the worker is root, FARM_RENDER_USER), every action runs as that user
through openjd-sessions' own `sudo -u USER -i setsid -w` (see capabilities.openjd_refusal for what
that needs); it may write only the working directory and the folders of the parameters a task
writes to (openjd_layout.open_to), and the worker reads its outputs and places its inputs without
following a link (openjd_layout.open_folder).

Every line openjd-sessions logs for the session (action output, banners, signals sent) goes to
the task's `on_log`; `openjd_progress` and `openjd_status` go to `on_progress` and `on_status`.

Nothing is left running (see openjd_procs): every process carries markers of its session and its
action in its environment. openjd-sessions kills an action's process group; what left the group
is killed by its marker: a task action's leftovers when the task ends (or as soon as its leader
has ended, rather than waiting the 5 s openjd-sessions gives a stream still open), and anything
of the session when the session ends. An environment's processes (a DCC adaptor's daemon) live
until the session ends.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from renderfarm_worker import openjd_layout as layout
from renderfarm_worker import openjd_procs as procs
from renderfarm_worker import openjd_task
from renderfarm_worker.openjd_task import OpenJDOrder, OpenJDOrderError, Outcome, TaskResult

if TYPE_CHECKING:
    from renderfarm.renderers.account import RenderAccount

log = logging.getLogger("renderfarm.worker.openjd")

@dataclass
class _Listener:
    on_log: Callable[[str], None]
    on_progress: Callable[[float], None] | None = None
    on_status: Callable[[str], None] | None = None
    progress: float | None = None  # the last passed on
    status: str | None = None


def _to_worker_log(line: str) -> None:
    log.info("%s", line)


@dataclass
class _Warm:
    """One openjd Session and what the runner knows about it."""

    key: tuple[str, str]
    id: str
    folder: Path
    session: object  # openjd.sessions.Session
    job: object  # openjd.model JobWithSymbolTables
    parameters: list[layout.PathParameter]
    entered: list[tuple[str, object]] = field(default_factory=list)  # (identifier, symtab)
    ready: bool = False  # every environment entered
    actions: int = 0  # started so far: numbers each action's marker
    last_used: float = field(default_factory=time.monotonic)

    @property
    def params_dir(self) -> Path:
        return self.folder / layout.PARAMS

    @property
    def step(self):
        return next(s for s in self.job.job.steps if s.name == self.key[1])


class _Lines(logging.Handler):
    """Routes the records openjd-sessions logs for one session to that session's listener."""

    def __init__(self, runner: OpenJDRunner) -> None:
        super().__init__(logging.INFO)
        self.runner = runner

    def emit(self, record: logging.LogRecord) -> None:
        sid = self.runner._session_id
        if sid is not None and getattr(record, "session_id", None) == sid:
            try:
                self.runner._listener.on_log(record.getMessage())
            except Exception:  # a log that cannot be written must not break the action's I/O thread
                self.handleError(record)


class OpenJDRunner:
    """The OpenJD side of one worker: at most one warm session, one task at a time."""

    def __init__(self, root: Path, account: RenderAccount | None = None) -> None:
        self.root = root
        self.account = account  # the render user actions run as (through sudo), if any
        self._lock = threading.Lock()  # held by whoever drives the session (a task, a close)
        self._warm: _Warm | None = None
        self._listener = _Listener(_to_worker_log)
        self._done = threading.Event()
        self._cancel = threading.Event()
        self._cancel_limit: timedelta | None = None
        self._session_id: str | None = None  # whose lines the listener gets
        self._handler = _Lines(self)

    # -- the task's side ------------------------------------------------------------------------

    def run_task(self, job_id: str, order: OpenJDOrder, *, on_log: Callable[[str], None],
                 on_progress: Callable[[float], None] | None = None,
                 on_status: Callable[[str], None] | None = None,
                 stage_inputs: Callable[[Path], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> TaskResult:
        """Run one task of `order.step` of job `job_id`, in the warm session of that job and step
        (opened, and its environments entered, if need be); block until it ends. `stage_inputs`
        is called with the session's `params/` folder before the action runs (to put the task's
        inputs there); `should_stop` is polled while it runs and cancels it when true."""
        with self._lock:
            self._cancel.clear()
            self._cancel_limit = None
            self._listener = _Listener(on_log, on_progress, on_status)
            try:
                return self._run(job_id, order, stage_inputs, should_stop)
            finally:
                self._listener = _Listener(_to_worker_log)

    def cancel(self, time_limit: float | None = None) -> None:
        """Cancel the running task (from any thread) by its action's cancelation method:
        NOTIFY_THEN_TERMINATE sends SIGTERM, then kills the process group after the notify
        period. `time_limit` caps that period (0: kill now). The session ends after it."""
        self._cancel_limit = None if time_limit is None else timedelta(seconds=time_limit)
        self._cancel.set()
        self._cancel_running()

    def close(self, time_limit: float | None = None) -> None:
        """End the warm session, if any (worker shutdown): cancel what runs, exit the
        environments, kill what is left."""
        self.cancel(time_limit)
        with self._lock:
            self._end()

    def close_if_idle(self, idle_for: float) -> None:
        """End the warm session if no task has used it for `idle_for` seconds."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            if self._warm is not None and time.monotonic() - self._warm.last_used >= idle_for:
                self._end()
        finally:
            self._lock.release()

    @property
    def session_key(self) -> tuple[str, str] | None:
        """(job id, step name) of the warm session, if one is open."""
        return self._warm.key if self._warm is not None else None

    # -- driving the session --------------------------------------------------------------------

    def _run(self, job_id, order, stage_inputs, should_stop) -> TaskResult:
        key = (job_id, order.step)
        if self._warm is not None and self._warm.key != key:
            listener, self._listener = self._listener, _Listener(_to_worker_log)
            try:  # the other session's exits are no part of this task's log
                self._end()
            finally:
                self._listener = listener
        if self._warm is None:
            try:
                self._warm = self._open(key, order)
            except Exception as e:  # a template or value the model refuses: this task fails
                return TaskResult(Outcome.FAILED, f"openjd: {e}", [], self.root)
        try:
            return self._run_in(self._warm, order, stage_inputs, should_stop)
        except BaseException:  # whatever broke inside the session ends it
            self._end()
            raise

    def _run_in(self, warm: _Warm, order, stage_inputs, should_stop) -> TaskResult:
        from openjd.sessions import ActionState

        if stage_inputs is not None:
            stage_inputs(warm.params_dir)
        if not warm.ready:
            failed = self._enter(warm, should_stop)
            if failed is not None:
                self._end()
                return failed
        before = layout.snapshot(warm.params_dir, warm.parameters)
        step = warm.step
        values = openjd_task.task_values(order.task_parameters)
        status = self._act(lambda env: warm.session.run_task(
            step_script=step.script, task_parameter_values=values, step_name=step.name,
            resolved_symtab=warm.job.step_symbol_tables.get(step.name), os_env_vars=env),
            should_stop, watch=True)
        outputs = layout.written(before, layout.snapshot(warm.params_dir, warm.parameters))
        warm.last_used = time.monotonic()
        result = openjd_task.result_of(status, outputs, warm.params_dir)
        if status is None or status.state != ActionState.SUCCESS:
            self._end()
        return result

    def _open(self, key: tuple[str, str], order: OpenJDOrder) -> _Warm:
        from openjd.sessions import LOG, Session

        job_template = openjd_task.decode(order.template)
        if order.step not in [s.name for s in job_template.steps]:
            raise OpenJDOrderError(f"openjd.step: no step named {order.step!r} in the template")
        sid = f"{_safe(key[0])}-{_safe(key[1])}-{secrets.token_hex(4)}"
        folder = self.root / sid
        folder.mkdir(parents=True)
        self._session_id = sid
        LOG.addHandler(self._handler)
        LOG.propagate = False  # the lines belong in attempt logs, not in the worker's own
        try:
            values = openjd_task.job_values(job_template, order.job_parameters)
            parameters = layout.path_parameters(
                job_template, {k: str(v.value) for k, v in values.items()}, folder / layout.PARAMS)
            layout.make_room(parameters)
            if self.account is not None:
                layout.open_to(self.account, folder, parameters)
            for parameter in parameters:
                values[parameter.name] = openjd_task.parameter_value("PATH", str(parameter.local))
            job = openjd_task.create_job(job_template, values)
            session = Session(
                session_id=sid, job_parameter_values=values, job_name=str(job.job.name),
                path_mapping_rules=layout.mapping_rules(parameters, folder, order.mappings) or None,
                callback=self._callback, os_env_vars={procs.SESSION_MARKER: sid, **python_env()},
                session_root_directory=folder, revision_extensions=openjd_task.extensions(job_template),
                user=self._session_user())
        except Exception:
            LOG.removeHandler(self._handler)
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return _Warm(key, sid, folder, session, job, parameters)

    def _enter(self, warm: _Warm, should_stop) -> TaskResult | None:
        """Enter the job's environments, then the step's; the failure of one, as a result."""
        from openjd.sessions import ActionState

        job = warm.job
        todo = [(env, job.job_symbol_table, None) for env in job.job.jobEnvironments or []]
        step = warm.step
        todo += [(env, job.step_symbol_tables.get(step.name), step.name)
                 for env in step.stepEnvironments or []]
        for env, symtab, step_name in todo:
            identifier: list[str] = []
            status = self._act(lambda env_vars: identifier.append(warm.session.enter_environment(
                environment=env, step_name=step_name, resolved_symtab=symtab,
                os_env_vars=env_vars)), should_stop)
            if identifier:  # entered, even if it failed: openjd-sessions exits it too
                warm.entered.append((identifier[0], symtab))
            if status is not None and status.state == ActionState.SUCCESS:
                continue
            result = openjd_task.result_of(status, [], warm.params_dir)
            what = f"environment {env.name!r} did not start"
            return TaskResult(result.outcome, f"{what}: {result.message}", [], warm.params_dir,
                              result.exit_code)
        warm.ready = True
        return None

    def _end(self) -> None:
        """Exit the warm session's environments in reverse, delete its folders and kill what is
        left of its processes. Called with the lock held."""
        from openjd.sessions import LOG

        warm = self._warm  # stays current while its environments exit: their lines are logged
        if warm is None:
            return
        try:
            for identifier, symtab in reversed(warm.entered):
                self._act(lambda env: warm.session.exit_environment(
                    identifier=identifier, resolved_symtab=symtab, os_env_vars=env),
                    None, cancelable=False)
        finally:
            self._warm = None
            warm.session.cleanup()
            LOG.removeHandler(self._handler)
            killed = procs.kill_marked(procs.SESSION_MARKER, warm.id, uids=self._uids())
            if killed:
                log.warning("openjd session %s left processes %s running: killed", warm.id, killed)
            if self.account is not None:  # nothing of the render user's outlives its session
                self.account.sweep()
            shutil.rmtree(warm.folder, ignore_errors=True)

    def _act(self, start: Callable[[dict], None], should_stop, *, cancelable: bool = True,
             watch: bool = False):
        """Start one action (`start` gets the environment variables to add) and wait for it to
        end; its final ActionStatus (None: not started). With `watch` (a task's action), what
        it leaves running is killed."""
        if cancelable and self._cancel.is_set():
            return openjd_task.canceled_before_start()
        warm = self._warm
        warm.actions += 1
        tree = procs.ActionTree(f"{warm.id}.{warm.actions}", uids=self._uids())
        self._done.clear()
        self._listener.progress = self._listener.status = None
        start({procs.ACTION_MARKER: tree.value})
        if warm.session.state.value != "running":  # ended (or failed to start) inside start()
            self._done.set()
        if cancelable and self._cancel.is_set():
            self._cancel_running()
        polls = 0
        while not self._done.wait(0.1):
            polls += 1
            if cancelable and should_stop is not None and not self._cancel.is_set() and should_stop():
                self.cancel()
            if watch and polls % 5 == 0 and tree.orphans():
                self._listener.on_log(f"killed {tree.kill()}: still running after the action ended")
        if watch and (killed := tree.kill()):
            self._listener.on_log(f"killed {killed}: still running after the action ended")
        return warm.session.action_status

    def _session_user(self):
        """openjd-sessions' PosixSessionUser for the render user: it runs each action with `sudo -u
        USER -i setsid -w`, and gives the session's working directory and embedded files to the
        user's group (root:GROUP, 0770 and 0660). None: actions run as the worker's own user."""
        if self.account is None:
            return None
        import grp

        from openjd.sessions import PosixSessionUser

        return PosixSessionUser(self.account.name, group=grp.getgrgid(self.account.gid).gr_name)

    def _uids(self) -> frozenset[int]:
        """Whose processes may carry this runner's markers: the worker's, and the render user's."""
        return frozenset({self.account.uid}) if self.account is not None else frozenset()

    def _callback(self, session_id: str, status) -> None:
        from openjd.sessions import ActionState

        if status.state != ActionState.RUNNING:
            self._done.set()
            return
        # Each call carries the action's whole status so far: pass on only what changed.
        listener = self._listener
        if status.progress is not None and status.progress != listener.progress:
            listener.progress = status.progress
            if listener.on_progress is not None:
                listener.on_progress(float(status.progress))
        if status.status_message is not None and status.status_message != listener.status:
            listener.status = status.status_message
            if listener.on_status is not None:
                listener.on_status(status.status_message)

    def _cancel_running(self) -> None:
        warm = self._warm
        if warm is None:
            return
        try:
            warm.session.cancel_action(time_limit=self._cancel_limit)
        except RuntimeError:  # nothing running just now; the flag stops the next action
            pass


def python_env() -> dict[str, str]:
    """FARM_PYTHON: this worker's own Python interpreter (it has Pillow and numpy), for templates
    whose actions run a script: `bash -c 'exec "${FARM_PYTHON:-python3}" "$@"' ...`."""
    import sys

    return {"FARM_PYTHON": sys.executable} if sys.executable else {}


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._" else "_" for c in text)[:40] or "_"
