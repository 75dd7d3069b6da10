"""What an OpenJD task is on a worker: the order's `openjd` field, parsed; the result a task
ends with; and the openjd-model calls that turn the template into a job. openjd is imported
inside the functions, so importing this costs nothing on a worker that never runs one."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from renderfarm.openjd import EXTENSIONS as SUPPORTED_EXTENSIONS  # the manager's own set, one list

TASK_PARAMETER_TYPES = ("INT", "FLOAT", "STRING", "PATH", "CHUNK[INT]")


class OpenJDOrderError(ValueError):
    """Raised when an order's `openjd` field is not the shape the manager sends."""


class Outcome(str, Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    TIMED_OUT = "timed_out"


@dataclass(frozen=True)
class OpenJDOrder:
    """What an order carries for one OpenJD task."""

    template: dict
    job_parameters: dict[str, str]
    step: str
    task_parameters: dict[str, tuple[str, str]]  # name -> (type, value)
    # (absolute folder of the artist's disk, its path under params/): asset references' rules
    mappings: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, raw: object) -> OpenJDOrder:
        if not isinstance(raw, dict):
            raise OpenJDOrderError(f"openjd: expected an object, got {type(raw).__name__}")
        template, job_parameters = raw.get("template"), raw.get("job_parameters", {})
        step, task_parameters = raw.get("step"), raw.get("task_parameters", {})
        if not isinstance(template, dict):
            raise OpenJDOrderError("openjd.template: expected an object")
        if not isinstance(step, str) or not step:
            raise OpenJDOrderError(f"openjd.step: expected a step name, got {step!r}")
        if not isinstance(job_parameters, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in job_parameters.items()):
            raise OpenJDOrderError("openjd.job_parameters: expected names mapped to strings")
        if not isinstance(task_parameters, dict):
            raise OpenJDOrderError("openjd.task_parameters: expected an object")
        parsed = {}
        for name, spec in task_parameters.items():
            kind = spec.get("type") if isinstance(spec, dict) else None
            value = spec.get("value") if isinstance(spec, dict) else None
            if kind not in TASK_PARAMETER_TYPES or not isinstance(value, str):
                raise OpenJDOrderError(f"openjd.task_parameters.{name}: bad type or value: {spec!r}")
            parsed[str(name)] = (kind, value)
        mappings = raw.get("mappings") or ()
        if not isinstance(mappings, (list, tuple)) or not all(
                isinstance(m, dict) and isinstance(m.get("source"), str) and isinstance(m.get("path"), str)
                for m in mappings):
            raise OpenJDOrderError("openjd.mappings: expected a list of {source, path}")
        return cls(template, dict(job_parameters), step, parsed,
                   tuple((m["source"], m["path"]) for m in mappings))


@dataclass(frozen=True)
class TaskResult:
    outcome: Outcome
    message: str  # why it did not succeed: the openjd_fail text, the exit code, the timeout
    outputs: list[str]  # files written, relative to output_root
    output_root: Path
    exit_code: int | None = None
    progress: float | None = None
    status: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.SUCCEEDED


@dataclass(frozen=True)
class NotStarted:
    state: object
    fail_message: str = "canceled before it started"
    exit_code: int | None = None
    progress: float | None = None
    status_message: str | None = None


def canceled_before_start() -> NotStarted:
    from openjd.sessions import ActionState

    return NotStarted(ActionState.CANCELED)


def result_of(status, outputs: list[str], root: Path) -> TaskResult:
    from openjd.sessions import ActionState

    if status is None:
        return TaskResult(Outcome.FAILED, "the action did not start", outputs, root)
    outcome = {
        ActionState.SUCCESS: Outcome.SUCCEEDED, ActionState.CANCELED: Outcome.CANCELED,
        ActionState.TIMEOUT: Outcome.TIMED_OUT,
    }.get(status.state, Outcome.FAILED)
    if outcome is Outcome.SUCCEEDED:
        message = ""
    elif status.fail_message:
        message = status.fail_message
    elif outcome is Outcome.TIMED_OUT:
        message = "the action ran past its timeout"
    elif outcome is Outcome.CANCELED:
        message = "canceled"
    elif status.exit_code is not None:
        message = f"exit code {status.exit_code}"
    else:
        message = "failed"
    return TaskResult(outcome, message, outputs, root, status.exit_code, status.progress,
                      status.status_message)


def decode(template: dict):
    from openjd.model import decode_job_template

    return decode_job_template(template=template, supported_extensions=SUPPORTED_EXTENSIONS)


def extensions(job_template):
    from openjd.model import RevisionExtensions, SpecificationRevision

    asked = [str(getattr(e, "value", e)) for e in job_template.extensions or []]
    return RevisionExtensions(spec_rev=SpecificationRevision.v2023_09, supported_extensions=asked)


def job_values(job_template, given: dict[str, str]) -> dict:
    """The job's parameter values, typed by the template, defaults applied. Paths are left as
    submitted (no directory of the submitter's exists here)."""
    from openjd.model import preprocess_job_parameters

    return dict(preprocess_job_parameters(
        job_template=job_template, job_parameter_values=given, job_template_dir=Path(),
        current_working_dir=Path(), allow_job_template_dir_walk_up=True))


def create_job(job_template, values: dict):
    from openjd.model import create_job_with_symbol_tables

    return create_job_with_symbol_tables(job_template=job_template, job_parameter_values=values)


def parameter_value(kind: str, value: str):
    from openjd.model import ParameterValue, ParameterValueType

    return ParameterValue(type=ParameterValueType(kind), value=value)


def task_values(task_parameters: dict[str, tuple[str, str]]) -> dict:
    return {name: parameter_value(kind, value) for name, (kind, value) in task_parameters.items()}
