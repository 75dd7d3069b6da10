"""The task order: what the manager puts on a worker's RQ queue for one attempt of one task.

It travels as one JSON string, the RQ job's only argument; the worker parses it before it builds
any path or key from it (ids are numbers, names are slugs, keys sit under the job's prefix)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, model_validator

from renderfarm.wire.base import (
    TASK_FRAMES_CAP,
    Frame,
    Id,
    JobId,
    Message,
    NodeName,
    RelativePath,
    Sha256,
    Slug,
    StorageKey,
    Url,
    WireError,
)
from renderfarm.wire.submission import (
    MAX_SIZE,
    MAX_TIMEOUT,
    SCENE_KEY,
    VERSION,
    OpenJDPathMapping,
    ParameterName,
    ParameterText,
    RenderOptions,
)

if TYPE_CHECKING:
    from renderfarm.renderers.registry import Region


class Box(Message):
    """A rectangle of the frame in pixels from its top-left: a tile task's region."""

    what = "region"
    x: Annotated[int, Field(ge=0, lt=MAX_SIZE)]
    y: Annotated[int, Field(ge=0, lt=MAX_SIZE)]
    width: Annotated[int, Field(ge=1, le=MAX_SIZE)]
    height: Annotated[int, Field(ge=1, le=MAX_SIZE)]


class TaskParameter(Message):
    """One task parameter's value as OpenJD types it: `{"type": "CHUNK[INT]", "value": "1-9"}`."""

    what = "task parameter"
    type: Literal["INT", "FLOAT", "STRING", "PATH", "CHUNK[INT]"]
    value: ParameterText


INPUTS_CAP = 1000  # files one OpenJD task's order may carry (its dependencies' outputs)


class OpenJDInput(Message):
    """One file an OpenJD task finds in its session before it runs, at `path` under the session's
    params/ folder: an output of a step it depends on (under `jobs/<job>/`), or a file the job
    brought from the artist's disk (`assets/<its sha256>`), read from `url` (presigned: a node
    holds no standing read access to other jobs' keys) or from `key`."""

    what = "openjd input"
    path: RelativePath
    key: StorageKey
    url: Url | None = None
    size: Annotated[int, Field(ge=0, le=2**40)]
    sha256: Sha256


class OpenJDTask(Message):
    """What an OpenJD task runs: the job template as submitted, every job parameter's value (the
    template's defaults filled in), the step's name and this task's parameter values."""

    what = "openjd task"
    template: dict[str, Any]
    job_parameters: Annotated[dict[ParameterName, ParameterText], Field(max_length=256)] = {}
    step: Annotated[str, Field(min_length=1, max_length=64)]
    task_parameters: Annotated[dict[ParameterName, TaskParameter], Field(max_length=64)] = {}
    # The files it finds in its session before it runs (None: none; left out of its JSON).
    inputs: Annotated[tuple[OpenJDInput, ...], Field(max_length=INPUTS_CAP)] | None = None
    # Folders of the artist's disk its session holds (asset references): path mapping rules.
    mappings: Annotated[tuple[OpenJDPathMapping, ...], Field(max_length=64)] | None = None


class TaskOrder(Message):
    """One attempt of one task, as a worker receives it."""

    what = "task order"
    # An assembly of 4,096 tiles names each tile's key; an OpenJD task its inputs (a key and a
    # presigned URL each).
    MAX_BYTES = 2 * 1024 * 1024

    v: Literal[2] = 2
    kind: Literal["render", "tile", "assemble", "openjd"] = "render"
    attempt_id: Id
    attempt: Annotated[int, Field(ge=1, le=1_000_000)]
    task_id: Id
    task_index: Annotated[int, Field(ge=0, le=1_000_000_000)]
    node: NodeName  # the node it is for: its outputs go under the node's own prefix
    job_id: JobId
    name: Slug
    renderer: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
    scene_key: Annotated[str, Field(pattern=SCENE_KEY)]
    scene_sha256: Sha256
    scene_url: Url | None = None  # the scene, presigned (a node holds no standing read access)
    frames: Annotated[tuple[Frame, ...], Field(min_length=1, max_length=TASK_FRAMES_CAP)]
    format: Literal["png", "png16", "exr"] = "png"
    width: Annotated[int, Field(ge=1, le=MAX_SIZE)]
    height: Annotated[int, Field(ge=1, le=MAX_SIZE)]
    timeout: Annotated[float, Field(ge=1, le=MAX_TIMEOUT)]
    region: Box | None = None  # a tile task's rectangle of the frame
    grid: Annotated[str, Field(max_length=32)] | None = None  # an assembly's tile grid...
    tile_keys: Annotated[tuple[StorageKey, ...], Field(max_length=4096)] = ()  # ...and its tiles
    tile_urls: Annotated[tuple[Url, ...], Field(max_length=4096)] = ()  # presigned, one per tile key
    renderer_version: Annotated[str, Field(pattern=VERSION)] | None = None
    options: RenderOptions | None = None
    openjd: OpenJDTask | None = None  # an OpenJD task's template, step and parameters

    @model_validator(mode="after")
    def _consistent(self) -> TaskOrder:
        if not self.scene_key.startswith(f"scenes/{self.scene_sha256}."):
            raise WireError(f"task order: scene_key {self.scene_key!r} is not the key of its scene_sha256")
        if self.kind == "tile":
            if self.region is None or len(self.frames) != 1:
                raise WireError("task order: a tile task names one frame and its region")
            r = self.region
            if r.x + r.width > self.width or r.y + r.height > self.height:
                raise WireError(f"task order: region {r.x},{r.y} {r.width}x{r.height} is outside the "
                                 f"{self.width}x{self.height} frame")
        elif self.region is not None:
            raise WireError(f"task order: a {self.kind} task has no region")
        if self.kind == "assemble":
            if not self.grid or not self.tile_keys or len(self.frames) != 1:
                raise WireError("task order: an assembly names one frame, its grid and its tiles' keys")
            prefix = f"jobs/{self.job_id}/tiles/"
            outside = next((k for k in self.tile_keys if not k.startswith(prefix)), None)
            if outside is not None:
                raise WireError(f"task order: tile key {outside[:100]!r} is outside {prefix}")
            if self.tile_urls and len(self.tile_urls) != len(self.tile_keys):
                raise WireError("task order: an assembly names a URL for each of its tiles, or none")
        elif self.grid is not None or self.tile_keys or self.tile_urls:
            raise WireError(f"task order: a {self.kind} task has no tiles to assemble")
        if self.openjd is not None:
            prefix = f"jobs/{self.job_id}/"
            outside = next((i.key for i in (self.openjd.inputs or ()) if not i.key.startswith(prefix)
                            and i.key != f"assets/{i.sha256}"), None)
            if outside is not None:
                raise WireError(f"task order: input key {outside[:100]!r} is outside {prefix} and is not "
                                "the key of its asset")
        if (self.kind == "openjd") != (self.openjd is not None):
            raise WireError(f"task order: a {self.kind} task {'needs' if self.kind == 'openjd' else 'has no'} "
                            "openjd part")
        return self

    @property
    def label(self) -> str:
        """How logs and messages name the attempt: `JOB:INDEX/ATTEMPT`."""
        return f"{self.job_id}:{self.task_index}/{self.attempt}"



    @property
    def prefix(self) -> str:
        """Where everything this attempt writes goes in storage."""
        from renderfarm.storage.keys import attempt_prefix

        return attempt_prefix(self.node, self.job_id, self.task_index, self.attempt)

    @property
    def ext(self) -> str:
        from renderfarm.images import extension

        return extension(self.format)

    def output_name(self, frame: int) -> str:
        from renderfarm.frames import frame_name

        return frame_name(self.name, frame, self.ext)

    def output_key(self, frame: int) -> str:
        return self.prefix + self.output_name(frame)

    @property
    def render_region(self) -> Region | None:
        from renderfarm.renderers.registry import Region

        r = self.region
        return None if r is None else Region(r.x, r.y, r.width, r.height)

    @property
    def render_options(self) -> dict:
        return self.options.model_dump(exclude_none=True) if self.options else {}
