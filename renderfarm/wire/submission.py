"""The submission: a job as the artist's `farm submit` sends it and the manager creates it.

The CLI builds it from the command line and parses it before uploading anything; the manager
parses the same bytes from the control stream. One parse, both ends: every field's type, range
and length, the farm's caps (tasks per job, frames per task, pixels, samples), and what the
renderer takes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationInfo, model_validator

from renderfarm.errors import FrameSpecError, InputError
from renderfarm.frames import lowest_frame
from renderfarm.wire.base import (
    INT64,
    MAX_WORKERS_CAP,
    JobId,
    Limits,
    Message,
    RelativePath,
    RequestId,
    Sha256,
    ShortSlug,
    Slug,
    Tag,
    limits_of,
)

MAX_SIZE = 65536  # pixels per side, whatever the caps
MAX_TIMEOUT = 7 * 86400  # seconds a task may be allowed to render
SCENE_KEY = r"^scenes/[0-9a-f]{64}\.(?:toml|json|zip)$"
VERSION = r"^[0-9]{1,3}(?:\.[0-9]{1,3}){0,2}$"


def _webhook_url(url: str) -> str:
    from renderfarm.webhooks import check_webhook_url

    try:
        return check_webhook_url(url)
    except InputError as e:
        raise ValueError(str(e).removeprefix("notify: ")) from None


# A webhook URL the artist gives (`--notify`): http(s) only, bounded (see renderfarm.webhooks).
WebhookUrl = Annotated[str, Field(max_length=2048), AfterValidator(_webhook_url)]


class RenderOptions(Message):
    """Options beyond frames and format, for the renderers that take them."""

    what = "render_options"

    samples: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None  # the farm's cap: FARM_MAX_SAMPLES
    allow_scripts: Literal[True] | None = None  # let a .blend's auto-run scripts run


class JobSpec(Message):
    """A job as submitted: what to render, how to split it, where and when it may run."""

    what = "submission"

    name: Slug
    owner: ShortSlug
    renderer: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
    scene_name: Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f/]+$")]
    scene_key: Annotated[str, Field(pattern=SCENE_KEY)]
    scene_sha256: Sha256
    frames: Annotated[str, Field(min_length=1, max_length=4096)]
    chunk: Annotated[int, Field(ge=1, le=INT64)] = 1  # the farm's cap: FARM_MAX_TASK_FRAMES
    priority: Annotated[int, Field(ge=0, le=100)] = 50
    pool: ShortSlug = "default"
    width: Annotated[int, Field(ge=1, le=MAX_SIZE)]
    height: Annotated[int, Field(ge=1, le=MAX_SIZE)]
    output_format: Literal["png", "png16", "exr"] = "png"
    timeout: Annotated[float, Field(ge=1, le=MAX_TIMEOUT)] | None = None
    tiles: Annotated[str, Field(max_length=32)] | None = None
    keep_tiles: bool = False
    max_workers: Annotated[int, Field(ge=1, le=MAX_WORKERS_CAP)] | None = None
    after: JobId | None = None
    frame_by_frame: bool = False  # with `after`: each frame waits only for the same frame of it
    first_last: bool = False
    site: ShortSlug | None = None
    prefer: Literal["cheapest", "greenest", "fastest"] | None = None
    deadline: Annotated[float, Field(ge=0, le=2**33)] | None = None  # epoch seconds it must be done by
    requires: Annotated[tuple[Tag, ...], Field(max_length=32)] = ()
    renderer_version: Annotated[str, Field(pattern=VERSION)] | None = None
    render_options: RenderOptions | None = None
    notify: WebhookUrl | None = None  # this job's own webhook, besides the farm's

    @model_validator(mode="after")
    def _fits_the_farm(self, info: ValidationInfo) -> JobSpec:
        self.check(limits_of(info))
        return self

    def check(self, limits: Limits) -> None:
        """The checks that span fields or need the farm's caps; raises InputError naming one."""
        from renderfarm.planning import check_task_count
        from renderfarm.renderers.limits import check_render_size, raise_hint
        from renderfarm.renderers.registry import get_renderer

        renderer = get_renderer(self.renderer)
        if self.output_format not in renderer.formats:
            raise InputError(f"format: the {renderer.name} renderer writes {', '.join(renderer.formats)}, "
                             f"not {self.output_format}")
        options = self.render_options or RenderOptions()
        asked = {"samples": options.samples, "allow_scripts": options.allow_scripts,
                 "version": self.renderer_version}
        for option, value in asked.items():
            if value is not None and option not in renderer.options:
                flag = {"version": "blender-version"}.get(option, option).replace("_", "-")
                raise InputError(f"{flag}: the {renderer.name} renderer does not take --{flag}")
        if self.chunk > limits.max_task_frames:
            raise InputError(f"chunk: {self.chunk} frames a task is over the farm's cap of {limits.max_task_frames} "
                             f"({raise_hint('max_task_frames')})")
        check_render_size(self.width, self.height, options.samples, limits)
        check_following(self.after, self.frame_by_frame)
        if self.keep_tiles and self.tiles is None:
            raise InputError("keep-tiles: the job is not tiled (add --tiles CxR or --tile-size PX)")
        if not self.scene_key.startswith(f"scenes/{self.scene_sha256}."):
            raise InputError(f"scene_key: {self.scene_key!r} is not the key of scene {self.scene_sha256[:12]}...")
        check_task_count(self.frames, self.chunk, limits.max_tasks, self.tile_count)
        if self.renderer == "blender" and lowest_frame(self.frames) < 0:
            raise FrameSpecError(f"frames: {self.frames[:40]!r} holds negative frames, which Blender's -f cannot name")
        if self.site is not None and limits.sites is not None and self.site not in limits.sites:
            known = ", ".join(sorted(limits.sites))
            raise InputError(f"site: {self.site!r} is not a configured site ({known})")

    @property
    def tile_count(self) -> int:
        """Tiles per frame (0: the job renders whole frames)."""
        if self.tiles is None:
            return 0
        from renderfarm.tiles import parse_grid

        return len(parse_grid(self.tiles).split(self.width, self.height))


def check_following(after: str | None, frame_by_frame: bool) -> None:
    """--frame-by-frame follows the frames of the --after job, so it needs one."""
    if frame_by_frame and after is None:
        raise InputError("frame-by-frame: it follows the frames of another job: add --after JOB")


class SubmitIntent(Message):
    """`farm submit`: create this job. The request id makes it idempotent: the same request id
    sent again never makes a second job."""

    what = "intent submit"
    MAX_BYTES = 128 * 1024

    type: Literal["submit"] = "submit"
    request_id: RequestId
    job: JobSpec


# OpenJD parameter names (`[A-Za-z_][A-Za-z0-9_]*`, at most 64) and their values as text.
ParameterName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
ParameterText = Annotated[str, Field(max_length=4096)]


# An absolute path on the artist's machine (POSIX or Windows), as a path mapping rule's source.
SourcePath = Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^(?:/|[A-Za-z]:[\\/]|\\\\)[^\x00-\x1f\x7f]*$")]
ASSETS_CAP = 500  # files an OpenJD job may bring (IN paths and asset references), within its order's inputs


class OpenJDAsset(Message):
    """A file the artist's disk had at submit, uploaded content-addressed (`assets/<sha256>`): a
    session finds it at `path` under its params/ folder before each task."""

    what = "openjd asset"
    path: RelativePath
    size: Annotated[int, Field(ge=0, le=2**40)]
    sha256: Sha256

    @property
    def key(self) -> str:
        return f"assets/{self.sha256}"


class OpenJDPathMapping(Message):
    """A folder of the artist's disk (`source`) and where a session holds it (`path`, under its
    params/ folder): a path mapping rule of the session."""

    what = "openjd path mapping"
    source: SourcePath
    path: RelativePath


class OpenJDSpec(Message):
    """An Open Job Description job as submitted: the template (a JSON object, bounded), its
    parameter values, and the farm's own settings (the `deadline:*` values of a bundle mapped
    onto them already). The parse checks the template with openjd-model and expands it against
    the farm's task cap, at both ends."""

    what = "submission"
    MAX_BYTES = 120 * 1024  # inside its intent's 128 KiB; the template alone is bounded at 96 KiB

    name: Slug
    owner: ShortSlug
    source: Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f/]+$")] = "template"
    template: dict[str, Any]
    parameters: Annotated[dict[ParameterName, ParameterText], Field(max_length=256)] = {}
    priority: Annotated[int, Field(ge=0, le=100)] = 50
    pool: ShortSlug = "default"
    timeout: Annotated[float, Field(ge=1, le=MAX_TIMEOUT)] | None = None
    max_attempts: Annotated[int, Field(ge=1, le=100)] | None = None  # deadline:maxRetriesPerTask + 1
    max_failed_tasks: Annotated[int, Field(ge=0, le=10**9)] | None = None  # deadline:maxFailedTasksCount
    suspended: bool = False  # deadline:targetTaskRunStatus SUSPENDED: created suspended
    max_workers: Annotated[int, Field(ge=1, le=MAX_WORKERS_CAP)] | None = None
    after: JobId | None = None
    site: ShortSlug | None = None
    prefer: Literal["cheapest", "greenest", "fastest"] | None = None
    deadline: Annotated[float, Field(ge=0, le=2**33)] | None = None
    requires: Annotated[tuple[Tag, ...], Field(max_length=32)] = ()
    notify: WebhookUrl | None = None
    # Files of IN/INOUT PATH parameters and of the bundle's asset references, and the folders of
    # the artist's disk they came from (asset references outside any PATH parameter).
    assets: Annotated[tuple[OpenJDAsset, ...], Field(max_length=ASSETS_CAP)] = ()
    mappings: Annotated[tuple[OpenJDPathMapping, ...], Field(max_length=64)] = ()

    @model_validator(mode="after")
    def _fits_the_farm(self, info: ValidationInfo) -> OpenJDSpec:
        self.expansion(limits_of(info))
        return self

    def expansion(self, limits: Limits):
        """The template checked and expanded (renderfarm.openjd.Expansion); InputError names the
        bad field."""
        from renderfarm.openjd import check_inputs, expand
        from renderfarm.wire.orders import INPUTS_CAP

        if self.site is not None and limits.sites is not None and self.site not in limits.sites:
            raise InputError(f"site: {self.site!r} is not a configured site ({', '.join(sorted(limits.sites))})")
        expansion = expand(self.template, dict(self.parameters), limits.max_tasks)
        check_inputs(expansion, self.template, len(self.assets), INPUTS_CAP)
        return expansion


class OpenJDSubmitIntent(Message):
    """`farm submit TEMPLATE|BUNDLE/`: create this OpenJD job (idempotent by request id, as a
    submit is)."""

    what = "intent submit"
    MAX_BYTES = 128 * 1024  # the template is bounded at 96 KiB of JSON (renderfarm.openjd)

    type: Literal["submit_openjd"] = "submit_openjd"
    request_id: RequestId
    job: OpenJDSpec
