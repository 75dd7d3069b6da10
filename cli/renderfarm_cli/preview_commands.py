"""Seeing a job's frames: contact-sheet (labelled thumbnails in a PNG) and movie (an H.264 MP4)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from renderfarm_cli.console import counted, note, out

# The library's defaults (renderfarm.preview), repeated here so `farm --help` need not import it.
COLUMNS_DEFAULT = 8
THUMB_WIDTH_DEFAULT = 200
FPS_DEFAULT = 24.0

JobArg = Annotated[str, typer.Argument(help="Job id, or a unique prefix of one.", show_default=False)]
FramesOpt = Annotated[Optional[str], typer.Option(help="Only these of the finished frames, e.g. 1-100x10 (default: all).")]


@contextmanager
def _progress(title: str) -> Iterator[Callable[[int, int], None]]:
    """An on_progress(i, total) callback drawing a progress bar, started at the first frame."""
    from renderfarm_cli.progress import Progress

    holder: dict[str, Progress] = {}

    def on_progress(i: int, total: int) -> None:
        if "p" not in holder:
            holder["p"] = Progress(title, total, "frames").__enter__()
        holder["p"].update(i, force=i == total)

    try:
        yield on_progress
    finally:
        if "p" in holder:
            holder["p"].__exit__(None, None, None)


def _note_partial(result) -> None:
    if result.frames < result.job_frames and result.job_state != "done":
        note(f"job {result.job_id} is {result.job_state}: {result.frames} of its {counted(result.job_frames, 'frame')} "
             "are shown")


def contact_sheet(
    job: JobArg,
    output: Annotated[str, typer.Argument(help="The PNG file to write.", show_default=False)],
    columns: Annotated[int, typer.Option(help="Thumbnails per row.")] = COLUMNS_DEFAULT,
    width: Annotated[int, typer.Option(help="Thumbnail width in pixels (16-4096); the height follows the frames.")] = THUMB_WIDTH_DEFAULT,
    frames: FramesOpt = None,
) -> None:
    """Draw a job's finished frames as thumbnails in a grid, each labelled with its frame number."""
    from renderfarm.config import load_settings
    from renderfarm.preview import contact_sheet as draw_sheet

    with _progress(f"contact sheet {job}") as on_progress:
        result = draw_sheet(load_settings(), job, output, columns=columns, width=width, frames=frames,
                            on_progress=on_progress)
    _note_partial(result)
    out().print(f"contact sheet of {counted(result.frames, 'frame')} of job [bold]{result.job_id}[/] "
                f"({result.columns}x{result.rows}, {result.width}x{result.height} px): {output}")


def movie(
    job: JobArg,
    output: Annotated[str, typer.Argument(help="The MP4 file to write.", show_default=False)],
    fps: Annotated[Optional[float], typer.Option(
        help=f"Frames per second (default: the scene's own frame rate, else {FPS_DEFAULT:g}).", show_default=False,
    )] = None,
    frames: FramesOpt = None,
) -> None:
    """Encode a job's finished frames, in frame order, as an H.264 MP4 movie."""
    from renderfarm.config import load_settings
    from renderfarm.preview import movie as encode_movie

    with _progress(f"movie {job}") as on_progress:
        result = encode_movie(load_settings(), job, output, fps=fps, frames=frames, on_progress=on_progress)
    _note_partial(result)
    rate = f"{result.fps:.6g} fps" + ("" if fps is not None or result.fps_from.startswith("the default") else
                                      " from the scene")
    out().print(f"movie of {counted(result.frames, 'frame')} of job [bold]{result.job_id}[/] "
                f"({result.width}x{result.height}, {rate}, {result.frames / result.fps:.1f} s): {output}")
    if fps is None and result.fps_from.startswith("the default"):
        note(f"{rate}, {result.fps_from} (--fps chooses another)")
