"""Open Job Description templates as farm jobs: reading a template or a job bundle, mapping
Deadline Cloud's `deadline:*` values onto the farm's settings, and expanding every step's
parameter space into farm tasks with their step dependencies and host requirements.

Parsing, parameter checks and expansion are openjd-model's (pinned to 0.14); this module turns
its errors into one line naming the field, and its objects into plain values the farm stores."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from renderfarm.errors import InputError
from renderfarm.scheduling import HostNeeds

EXTENSIONS = ("TASK_CHUNKING",)  # the OpenJD extensions the farm runs
TEMPLATE_MAX_BYTES = 96 * 1024  # a template's JSON, as it travels in the submission and each order
TEMPLATE_SUFFIXES = (".yaml", ".yml", ".json")
MAX_PARAMETERS = 256
ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_:]{0,127})=(.*)$", re.S)


@dataclass(frozen=True)
class Bundle:
    """A template with the parameter values and asset references that came with it."""

    template: dict[str, Any]
    values: dict[str, str]
    asset_references: dict[str, Any] | None = None
    source: str = "template"  # how errors name the template: its file name


@dataclass(frozen=True)
class FarmValues:
    """The farm's own settings a bundle gave as `deadline:*` parameter values."""

    priority: int | None = None
    max_attempts: int | None = None  # deadline:maxRetriesPerTask + 1
    max_failed_tasks: int | None = None  # deadline:maxFailedTasksCount
    suspended: bool = False  # deadline:targetTaskRunStatus SUSPENDED
    max_workers: int | None = None  # deadline:maxWorkerCount
    ignored: tuple[str, ...] = ()  # deadline:* names the farm has no setting for


@dataclass(frozen=True)
class TaskSpec:
    """One farm task of an OpenJD step: its parameter values as the order carries them."""

    step: str
    parameters: dict[str, dict[str, str]]  # NAME -> {"type": "INT", "value": "3"}


@dataclass(frozen=True)
class StepSpec:
    """One step: the steps it waits for, what a worker must have, and its tasks in order."""

    name: str
    after: tuple[str, ...]
    host: HostNeeds | None
    tasks: tuple[TaskSpec, ...]


@dataclass(frozen=True)
class Expansion:
    """A template with its parameter values, checked and expanded: steps in dependency order."""

    name: str
    job_parameters: dict[str, str]  # every job parameter's value, defaults filled in
    steps: tuple[StepSpec, ...] = field(default=())

    @property
    def task_count(self) -> int:
        return sum(len(s.tasks) for s in self.steps)

    def steps_json(self) -> str:
        """What dispatch needs of each step, as the job row keeps it: the steps it waits for
        and its host requirements."""
        return json.dumps({s.name: {"after": list(s.after), **({"host": s.host.to_dict()} if s.host else {})}
                           for s in self.steps}, sort_keys=True)


def is_template_path(path: Path) -> bool:
    """Whether `farm submit PATH` names an OpenJD template or job bundle rather than a scene: a
    directory, a YAML file, or a JSON file that names its `specificationVersion` (our own scenes
    may be JSON too)."""
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return True
    try:  # a name too long or unreadable is no template: the scene's own checks say what is wrong
        if path.is_dir():
            return True
        if suffix != ".json" or not path.is_file():
            return False
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and "specificationVersion" in doc


def read_document(path: Path, what: str) -> Any:
    """A YAML or JSON document; InputError names the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{what}: cannot read {path} ({e})") from None
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except ValueError as e:
        raise InputError(f"{what}: {path.name} is not valid JSON ({e})") from None
    except Exception as e:  # yaml.YAMLError, without importing yaml to name it
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{what}: {path.name} is not valid YAML ({first})") from None


def _bundle_file(folder: Path, stem: str) -> Path | None:
    found = [folder / f"{stem}{s}" for s in TEMPLATE_SUFFIXES if (folder / f"{stem}{s}").is_file()]
    if len(found) > 1:
        raise InputError(f"bundle: {folder} holds {' and '.join(p.name for p in found)}; keep one")
    return found[0] if found else None


def read_bundle(path: Path, assignments: list[str] | tuple[str, ...] = ()) -> Bundle:
    """A template file, or a job bundle directory (template.yaml|json, optional
    parameter_values.yaml|json and asset_references.yaml|json), with `-p NAME=VALUE` values
    over the bundle's own."""
    values: dict[str, str] = {}
    references = None
    if path.is_dir():
        template_path = _bundle_file(path, "template")
        if template_path is None:
            raise InputError(f"bundle: {path} holds no template.yaml or template.json")
        values_path = _bundle_file(path, "parameter_values")
        if values_path is not None:
            values = bundle_values(read_document(values_path, "parameter_values"))
        references_path = _bundle_file(path, "asset_references")
        if references_path is not None:
            references = asset_references(read_document(references_path, "asset_references"))
    elif path.is_file():
        template_path = path
    else:
        raise InputError(f"template: {path} does not exist")
    template = read_document(template_path, "template")
    if not isinstance(template, dict):
        raise InputError(f"template: {template_path.name} is not a mapping of fields")
    values.update(parse_assignments(assignments))
    return Bundle(template, values, references, template_path.name)


def parse_assignments(assignments: list[str] | tuple[str, ...]) -> dict[str, str]:
    """`-p NAME=VALUE` options as a dict; InputError names a malformed one."""
    values: dict[str, str] = {}
    for text in assignments:
        m = ASSIGNMENT.match(text)
        if m is None:
            raise InputError(f"parameter: {text[:60]!r} is not NAME=VALUE")
        values[m.group(1)] = m.group(2)
    return values


def bundle_values(doc: Any) -> dict[str, str]:
    """A bundle's parameter_values document (`parameterValues: [{name, value}]`) as a dict."""
    items = doc.get("parameterValues") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise InputError("parameter_values: parameterValues: missing, or not a list")
    values: dict[str, str] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or "value" not in item:
            raise InputError(f"parameter_values: parameterValues[{i}]: not a {{name, value}} mapping")
        value = item["value"]
        values[item["name"]] = value if isinstance(value, str) else json.dumps(value)
    return values


def asset_references(doc: Any) -> dict[str, Any]:
    """A bundle's asset_references document, checked for shape: input files and directories,
    output directories, referenced paths (renderfarm.openjd_assets uploads the inputs)."""
    refs = doc.get("assetReferences") if isinstance(doc, dict) else None
    if not isinstance(refs, dict):
        raise InputError("asset_references: assetReferences: missing, or not a mapping")
    for section, keys in (("inputs", ("filenames", "directories")), ("outputs", ("directories",))):
        part = refs.get(section, {})
        if not isinstance(part, dict):
            raise InputError(f"asset_references: assetReferences.{section}: not a mapping")
        for key in keys:
            paths = part.get(key, [])
            if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                raise InputError(f"asset_references: assetReferences.{section}.{key}: not a list of paths")
    return refs


def farm_values(values: dict[str, str]) -> tuple[FarmValues, dict[str, str]]:
    """Split `deadline:*` values (as Deadline Cloud's submitters write them) from the template's
    own parameters, mapped onto the farm's settings; InputError names a bad one."""
    mine = {k: v for k, v in values.items() if not k.startswith("deadline:")}
    theirs = {k[len("deadline:"):]: v for k, v in values.items() if k.startswith("deadline:")}

    def number(name: str, low: int, high: int) -> int | None:
        if name not in theirs:
            return None
        text = theirs.pop(name).strip()
        if not re.fullmatch(r"-?[0-9]{1,9}", text) or not low <= int(text) <= high:
            raise InputError(f"deadline:{name}: {text[:40]!r} is not a whole number from {low} to {high}")
        return int(text)

    priority = number("priority", 0, 100)
    retries = number("maxRetriesPerTask", 0, 99)
    failed = number("maxFailedTasksCount", 0, 10**9)
    workers = number("maxWorkerCount", 1, 10_000)
    status = theirs.pop("targetTaskRunStatus", "READY").strip().upper()
    if status not in ("READY", "SUSPENDED"):
        raise InputError(f"deadline:targetTaskRunStatus: {status[:40]!r} is not READY or SUSPENDED")
    farm = FarmValues(priority, None if retries is None else retries + 1, failed, status == "SUSPENDED", workers,
                      tuple(sorted(f"deadline:{k}" for k in theirs)))
    return farm, mine


def canonical(template: dict[str, Any]) -> bytes:
    """The template as the farm keeps and sends it: compact JSON with sorted keys (its SHA-256
    names it in storage)."""
    return json.dumps(template, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def template_sha256(template: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(template)).hexdigest()


def expand(template: dict[str, Any], values: dict[str, str], max_tasks: int) -> Expansion:
    """Check `template` and `values` with openjd-model and expand every step into its tasks;
    InputError names the bad field in one line."""
    size = len(canonical(template))
    if size > TEMPLATE_MAX_BYTES:
        raise InputError(f"template: {size:,} bytes of JSON, over the limit of {TEMPLATE_MAX_BYTES:,}")
    from openjd.model import (
        DecodeValidationError,
        StepDependencyGraph,
        StepParameterSpaceIterator,
        create_job,
        decode_job_template,
        preprocess_job_parameters,
    )

    try:
        job_template = decode_job_template(template=template, supported_extensions=EXTENSIONS)
    except DecodeValidationError as e:
        raise InputError(f"template: {_first_error(str(e))}") from None
    except (NotImplementedError, ValueError, TypeError) as e:
        raise InputError(f"template: {_first_line(str(e))}") from None
    bad = next((k for k in values if k.startswith("deadline:")), None)
    if bad is not None:
        raise InputError(f"parameter {bad}: a deadline:* value is the farm's setting, not the template's")
    try:
        resolved = preprocess_job_parameters(job_template=job_template, job_parameter_values=values,
                                             job_template_dir=Path(), current_working_dir=Path(),
                                             allow_job_template_dir_walk_up=True)
    except (ValueError, NotImplementedError) as e:
        raise InputError(f"parameter: {_first_line(str(e))}") from None
    try:
        job = create_job(job_template=job_template, job_parameter_values=resolved)
        order = StepDependencyGraph(job=job).topo_sorted()
    except (DecodeValidationError, ValueError) as e:
        raise InputError(f"template: {_first_error(str(e))}") from None
    spaces = [(step, StepParameterSpaceIterator(space=step.parameterSpace)) for step in order]
    total = sum(len(space) for _, space in spaces)
    if total > max_tasks:
        raise InputError(f"template: its steps make {total:,} tasks, over the farm's cap of {max_tasks:,}")
    steps = tuple(
        StepSpec(step.name, tuple(d.dependsOn for d in step.dependencies or ()), host_needs(step),
                 tuple(TaskSpec(step.name, {name: {"type": p.type.value, "value": str(p.value)}
                                             for name, p in params.items()}) for params in space))
        for step, space in spaces
    )
    return Expansion(job.name, {k: str(v.value) for k, v in resolved.items()}, steps)


def check_inputs(expansion: Expansion, template: dict[str, Any], assets: int, cap: int) -> None:
    """Refuse a job whose tasks of some step would need more inputs than a task's order carries
    (`cap`): each finds the `assets` the job brings and every file of the steps its step depends
    on (renderfarm.manager.openjd_outputs.task_inputs). Tasks write files only under PATH
    parameters whose dataFlow is OUT or INOUT; where the job has one, each task of a step
    depended on is counted as one file at least. InputError names the step and the count."""
    writes = any(isinstance(d, dict) and d.get("type") == "PATH" and d.get("dataFlow") in ("OUT", "INOUT")
                 for d in template.get("parameterDefinitions") or ())
    tasks = {s.name: len(s.tasks) for s in expansion.steps}
    for step in expansion.steps:
        upstream = sum(tasks[name] for name in step.after) if writes else 0
        if assets + upstream <= cap:
            continue
        parts = [f"{assets:,} file{'s' if assets != 1 else ''} the job brings"] if assets else []
        if upstream:
            names = ", ".join(repr(name) for name in step.after)
            parts.append(f"a file from each of the {upstream:,} tasks of step{'s' if len(step.after) > 1 else ''} "
                         f"{names}")
        raise InputError(f"template: step {step.name!r} would need {assets + upstream:,} inputs per task "
                         f"({' and '.join(parts)}), over the {cap:,} a task may carry")


def host_needs(step: Any) -> HostNeeds | None:
    """A step's hostRequirements as the scheduler matches them against workers."""
    req = step.hostRequirements
    if req is None:
        return None
    amounts = tuple((a.name, None if a.min is None else float(a.min), None if a.max is None else float(a.max))
                    for a in req.amounts or ())
    attributes = tuple((a.name, tuple(a.allOf or a.anyOf or ()), a.allOf is not None) for a in req.attributes or ())
    return HostNeeds(amounts, attributes)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "invalid"


def _first_error(text: str) -> str:
    """openjd-model's first error as one line: `steps[0].script.actions.onRun.comand: Extra
    inputs are not permitted`."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if lines and re.match(r"^\d+ validation errors? for ", lines[0]):
        lines = lines[1:]
    if len(lines) >= 2 and lines[0].endswith(":"):
        where = lines[0][:-1].replace(" -> ", ".")
        return f"{where}: {lines[1]}"
    return lines[0] if lines else "invalid"
