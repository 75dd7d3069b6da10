"""Where an OpenJD session's files live on a worker: the local path of each PATH job parameter,
the path mapping rules from the submitter's paths to those, and the files a task wrote.

A warm session owns one directory under the runner's root (see openjd_runner's docstring):

    <session dir>/params/<Name>            a PATH parameter whose value names no file or folder ('.')
    <session dir>/params/<Name>/<leaf>     any other PATH parameter: <leaf> is the last component of
                                           the submitted value (`renders`, `scene.ma`), so a program
                                           that reads a file's extension still sees it

Paths relative to `params/` (`OutputDir/renders/f.0001.png`) are what the farm stores and
downloads: they name the parameter first, so two parameters never collide, and a dependent step's
session finds an earlier step's outputs at the same relative path under its own `params/`.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from renderfarm.renderers.account import RenderAccount

PARAMS = "params"
FILE_STATE = tuple[int, int, int]  # (size, mtime_ns, inode): a file rewritten in place changes one


@dataclass(frozen=True)
class PathParameter:
    """One PATH job parameter as this worker sees it."""

    name: str
    submitted: str  # the value as submitted (the artist's path, or a relative one)
    local: Path  # where it lives in this session
    data_flow: str  # NONE, IN, OUT or INOUT
    object_type: str | None  # FILE, DIRECTORY or None (not said)

    @property
    def writes(self) -> bool:
        """Files written under it are the task's outputs."""
        return self.data_flow in ("OUT", "INOUT")


def submitted_path(value: str) -> PurePosixPath | PureWindowsPath:
    """The submitted value as a path of the submitter's own OS (a drive letter or a backslash
    says Windows)."""
    windows = PureWindowsPath(value)
    if windows.drive or ("\\" in value and "/" not in value):
        return windows
    return PurePosixPath(value)


def local_path(params_dir: Path, name: str, value: str) -> Path:
    """The local path of PATH parameter `name` whose submitted value is `value`."""
    leaf = submitted_path(value).name
    if leaf in ("", ".", ".."):
        return params_dir / name
    return params_dir / name / leaf


def path_parameters(template, values: dict[str, str], params_dir: Path) -> list[PathParameter]:
    """The PATH parameters of the decoded `template`, with `values` (every parameter's value,
    defaults applied) placed under `params_dir`."""
    found = []
    for definition in template.parameterDefinitions or []:
        if str(getattr(definition.type, "value", definition.type)) != "PATH":
            continue
        name = str(definition.name)
        value = values.get(name, "")
        flow = getattr(definition, "dataFlow", None)
        kind = getattr(definition, "objectType", None)
        found.append(PathParameter(
            name=name, submitted=value, local=local_path(params_dir, name, value),
            data_flow=str(getattr(flow, "value", flow) or "NONE"),
            object_type=str(getattr(kind, "value", kind)) if kind is not None else None,
        ))
    return found


def make_room(parameters: list[PathParameter]) -> None:
    """Create the folders a task expects to find: each parameter's own folder, and the local path
    itself for a DIRECTORY the task writes to (a tool may refuse to write into a missing one)."""
    for parameter in parameters:
        folder = parameter.local if parameter.local.name == parameter.name else parameter.local.parent
        folder.mkdir(parents=True, exist_ok=True)
        if parameter.writes and parameter.object_type == "DIRECTORY":
            parameter.local.mkdir(parents=True, exist_ok=True)


def mapping_rules(parameters: list[PathParameter], session_dir: Path,
                  folders: tuple[tuple[str, str], ...] = ()) -> list:
    """Path mapping rules from each absolute submitted path to its local path, so a scene that
    names the artist's paths finds them here; and from each folder of the artist's disk the job
    brought (`folders`: (source, path under params/), its asset references) to its local folder,
    made here. A rule whose source holds this session's own folder is left out: it would remap
    the local paths themselves."""
    from openjd.sessions import PathFormat, PathMappingRule

    rules = []
    params_dir = session_dir / PARAMS
    for text, relative in folders:
        (params_dir / relative).mkdir(parents=True, exist_ok=True)
    brought = [(text, params_dir / relative) for text, relative in folders]
    for text, local in [(p.submitted, p.local) for p in parameters] + brought:
        source = submitted_path(text)
        if not source.is_absolute():
            continue
        posix = isinstance(source, PurePosixPath)
        if posix and (source == PurePosixPath(session_dir) or source in PurePosixPath(session_dir).parents):
            continue
        rules.append(PathMappingRule(
            source_path_format=PathFormat.POSIX if posix else PathFormat.WINDOWS,
            source_path=source, destination_path=local,
        ))
    return rules


def snapshot(params_dir: Path, parameters: list[PathParameter]) -> dict[str, FILE_STATE]:
    """Every file under the parameters a task writes to, by its path relative to `params_dir`."""
    files: dict[str, FILE_STATE] = {}
    for parameter in parameters:
        if not parameter.writes:
            continue
        top = params_dir / parameter.name
        for folder, _dirs, names in os.walk(top):
            for name in names:
                path = Path(folder, name)
                try:
                    st = path.lstat()
                except FileNotFoundError:
                    continue
                if path.is_symlink():  # a link could point anywhere on the worker: never an output
                    continue
                files[path.relative_to(params_dir).as_posix()] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return files


def written(before: dict[str, FILE_STATE], after: dict[str, FILE_STATE]) -> list[str]:
    """The files that are new or changed between two snapshots, sorted."""
    return sorted(path for path, state in after.items() if before.get(path) != state)


def open_to(account: RenderAccount, session_dir: Path, parameters: list[PathParameter]) -> None:
    """Let the render user through to a session's folder: it passes the session's folder and
    `params/` (and lists neither), reads what the worker puts there, and writes only the folders of
    the parameters a task writes to (and, through its group, the working directory openjd-sessions
    makes): nothing else of the worker's."""
    (session_dir / PARAMS).mkdir(exist_ok=True)  # a template without PATH parameters has none yet
    for folder in (session_dir.parent.parent, session_dir.parent, session_dir, session_dir / PARAMS):
        account.pass_through(folder)  # the worker's scratch, its openjd/ folder, the session's
    for parameter in parameters:
        if parameter.writes:
            account.give(session_dir / PARAMS / parameter.name)
            if parameter.local.name != parameter.name and parameter.object_type == "DIRECTORY":
                account.give(parameter.local)


def open_folder(top: Path, parts: list[str] | tuple[str, ...], *, make: bool = False) -> int:
    """A descriptor of the folder `top/parts...`, each part opened below the last without following
    a link (made first, with `make`): a folder the render user may write can be swapped for a link
    at any moment, and nothing the worker reads or writes may go through one. OSError otherwise."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for part in parts:
            if part in ("", ".", "..") or "/" in part:
                raise OSError(22, f"{part!r} is not a folder name")
            if make:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
            below = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = below
        return fd
    except BaseException:
        os.close(fd)
        raise


def copy_out(params_dir: Path, relative: str, target: Path) -> None:
    """Copy the output `relative` (below `params_dir`) to `target`, the worker's own: a plain file
    reached without following a link, or OSError."""
    import shutil

    *folders, name = relative.split("/")
    folder = open_folder(params_dir, folders)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
    finally:
        os.close(folder)
    with os.fdopen(fd, "rb") as source:
        if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
            raise OSError(21, f"{relative} is not a plain file")
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as copy:
            shutil.copyfileobj(source, copy)
