"""Seeing a job's frames: a contact sheet of labelled thumbnails (PNG) and an H.264 movie (MP4).

Both stream the job's final frames from storage in frame order: each is downloaded to a temporary
file (a few ahead, to hide a long link's latency), decoded to 8-bit RGB for display, used and
deleted. 16-bit PNGs and EXRs decode through renderfarm.images (OpenImageIO); EXR's linear light
gets the farm's gamma-2 curve (`images.to_8bit`), so it previews like the shot rendered to PNG.

ffmpeg is the binary the imageio-ffmpeg wheel ships, run with an argv list. We drive it rather
than call `imageio_ffmpeg.write_frames`, which lets ffmpeg write to the terminal (we keep its
stderr for the error line) and rescales to multiples of 16 (we pad an odd size by one pixel).
numpy, Pillow and the database are imported inside the functions that use them.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import subprocess
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from fractions import Fraction
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

from renderfarm.errors import InputError, NotFoundError, RenderError, VerificationError
from renderfarm.storage.keys import frames_prefix

if TYPE_CHECKING:
    import numpy as np

    from renderfarm.config import Settings
    from renderfarm.storage import Storage

Progress = Callable[[int, int], None]

COLUMNS_DEFAULT = 8
THUMB_WIDTH_DEFAULT = 200
THUMB_WIDTH_RANGE = (16, 4096)
FPS_DEFAULT = 24.0
FPS_MAX = 240.0
SHEET_MAX_PIXELS = 8192 * 8192  # 192 MiB of RGB: past it, ask for fewer or smaller thumbnails

SHEET_GAP = 6  # pixels between thumbnails and around the sheet
SHEET_BACKGROUND = (30, 30, 30)
LABEL_COLOUR = (220, 220, 220)
PREFETCH = 4  # frames downloaded ahead of the one in use: hides a 100 ms link, bounds the disk

H264_CRF = 18  # visually lossless for previews of renders
H264_PRESET = "veryfast"
"""48 demo frames (640x360) took 0.80 s to encode with medium, 0.50 s with fast, 0.23 s with
veryfast, all within 2% of 300 kB: for dailies, the speed is worth more."""
DOWNLOAD_RETRY = 60.0  # seconds a download keeps retrying a storage server that is restarting

_FRAME_FILE = re.compile(r"(?P<name>[^/]+)\.(?P<frame>-?[0-9]{4,})\.(?P<ext>png|exr)")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EXR_MAGIC = b"\x76\x2f\x31\x01"


@dataclass(frozen=True)
class StoredFrame:
    """One final frame of a job in storage."""

    frame: int
    key: str
    size: int


@dataclass(frozen=True)
class Preview:
    """What a contact sheet or movie holds, for the CLI to report."""

    job_id: str
    job_state: str
    job_frames: int  # the frames the job renders in all
    path: Path
    frames: int  # the frames shown
    width: int
    height: int
    columns: int = 0  # contact sheets only
    rows: int = 0
    fps: float = 0.0  # movies only: the frame rate used, and why that one
    fps_from: str = ""


@dataclass(frozen=True)
class SheetLayout:
    """Where each thumbnail and its label sit on a contact sheet."""

    columns: int
    rows: int
    thumb_width: int
    thumb_height: int
    label_height: int
    font_size: int
    gap: int = SHEET_GAP

    @property
    def width(self) -> int:
        return self.gap + self.columns * (self.thumb_width + self.gap)

    @property
    def height(self) -> int:
        return self.gap + self.rows * (self.thumb_height + self.label_height + self.gap)

    def cell(self, index: int) -> tuple[int, int]:
        """The top-left corner of thumbnail `index` (row by row); its label sits just below."""
        row, column = divmod(index, self.columns)
        return (self.gap + column * (self.thumb_width + self.gap),
                self.gap + row * (self.thumb_height + self.label_height + self.gap))


def sheet_layout(count: int, columns: int, thumb_width: int, frame_width: int, frame_height: int) -> SheetLayout:
    """The grid for `count` thumbnails `thumb_width` wide of frame_width x frame_height frames.

    (24, 8, 200, 640, 360) -> 8 columns, 3 rows of 200x113 thumbnails (112.5 rounded up),
    24-pixel labels (16 px type): a 1654x435 sheet. Fewer frames than columns: one short row.
    """
    cols = max(1, min(columns, count))
    font = min(max(thumb_width // 12, 10), 32)
    return SheetLayout(columns=cols, rows=max(1, math.ceil(count / cols)), thumb_width=thumb_width,
                       thumb_height=max(1, int(thumb_width * frame_height / frame_width + 0.5)),
                       label_height=font + font // 2, font_size=font)


def check_sheet_options(columns: object, width: object) -> tuple[int, int]:
    """The --columns and --width of a contact sheet, checked."""
    if not isinstance(columns, int) or columns < 1:
        raise InputError(f"columns: {columns!r} must be a whole number of at least 1")
    low, high = THUMB_WIDTH_RANGE
    if not isinstance(width, int) or not low <= width <= high:
        raise InputError(f"width: {width!r} must be a whole number of pixels from {low} to {high}")
    return columns, width


def check_fps(fps: object) -> Fraction:
    """The movie's frame rate as an exact fraction (23.976 -> 2997/125)."""
    try:
        value = float(fps)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if not 0 < value <= FPS_MAX:
        raise InputError(f"fps: {fps!r} must be a number above 0 and at most {FPS_MAX:g}")
    return Fraction(value).limit_denominator(1001)


def check_output(path: Path, suffix: str) -> Path:
    """The output path, when it names a `suffix` file that is not a directory."""
    if path.suffix.lower() != suffix:
        raise InputError(f"output: {str(path)[:200]!r} must end in {suffix}")
    try:
        is_dir = path.is_dir()
    except (OSError, ValueError) as e:  # a NUL byte, a name too long
        raise InputError(f"output: {str(path)[:200]!r} is not a usable path ({e})") from None
    if is_dir:
        raise InputError(f"output: {str(path)[:200]!r} is a directory")
    return path


def stored_frames(storage: Storage, job_id: str) -> list[StoredFrame]:
    """The job's final frames in storage, in frame order (not key order: -0007 and 10000 sort
    wrongly as text)."""
    prefix = frames_prefix(job_id)
    found = []
    for obj in storage.list(prefix):
        match = _FRAME_FILE.fullmatch(obj.key[len(prefix):])
        if match:
            found.append(StoredFrame(int(match["frame"]), obj.key, obj.size))
    return sorted(found, key=lambda f: (f.frame, f.key))


def display_pixels(pixels: np.ndarray) -> np.ndarray:
    """Decoded pixels (uint8, uint16 or float; RGB or RGBA) as 8-bit RGB for a screen.

    PNGs are already display-encoded: 16 bits become 8 by rounding, straight alpha is laid over
    black. EXRs are linear and premultiplied: alpha is dropped (that is "over black"), NaN and
    infinities are made black and white, and the farm's gamma-2 curve is applied.
    """
    import numpy as np

    from renderfarm.images import to_8bit

    if pixels.dtype.kind == "f":
        rgb = np.nan_to_num(pixels[:, :, :3].astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return to_8bit(rgb)
    if pixels.dtype == np.uint8 and pixels.shape[2] == 3:
        return pixels
    top = int(np.iinfo(pixels.dtype).max)
    rgb = pixels[:, :, :3].astype(np.uint64)
    scale = top
    if pixels.shape[2] == 4:
        rgb *= pixels[:, :, 3:4]
        scale = top * top
    return ((rgb * 255 + scale // 2) // scale).astype(np.uint8)


def read_display_frame(path: Path, what: str) -> np.ndarray:
    """Decode one frame file (8-bit PNG, 16-bit PNG or EXR, told by its header) to 8-bit RGB."""
    from renderfarm.images import read_pixels

    with open(path, "rb") as file:
        head = file.read(32)
    if head.startswith(_PNG_SIGNATURE) and len(head) > 24:
        fmt = "png16" if head[24] == 16 else "png"
    elif head.startswith(_EXR_MAGIC):
        fmt = "exr"
    else:
        raise VerificationError(f"{what}: not a PNG or OpenEXR file")
    return display_pixels(read_pixels(path, fmt, what=what))


def contact_sheet(
    settings: Settings, job: str, out: Path, *, columns: int = COLUMNS_DEFAULT,
    width: int = THUMB_WIDTH_DEFAULT, frames: str | None = None, on_progress: Progress | None = None,
) -> Preview:
    """Draw the finished frames of `job` (an id or unique prefix) as a grid of thumbnails
    `width` pixels wide, `columns` to a row, each labelled with its frame number, into the PNG
    `out`. `frames` (a frame spec) picks some of them. Works on partly finished jobs."""
    from PIL import Image, ImageDraw, ImageFont

    columns, width = check_sheet_options(columns, width)
    out = check_output(Path(out), ".png")
    job_id, state, total, _ = find_job(settings, job)
    storage, chosen = _chosen_frames(settings, job_id, state, frames)
    layout: SheetLayout | None = None
    sheet = draw = None
    with _writing(out) as partial, _streamed(storage, chosen) as fetched:
        for i, (frame, path) in enumerate(fetched, 1):
            image = Image.fromarray(read_display_frame(path, frame.key))
            if layout is None:  # the first frame sets the thumbnails' shape
                layout = sheet_layout(len(chosen), columns, width, image.width, image.height)
                _check_sheet_size(layout, len(chosen))
                sheet = Image.new("RGB", (layout.width, layout.height), SHEET_BACKGROUND)
                draw = ImageDraw.Draw(sheet)
                font = ImageFont.load_default(size=layout.font_size)
            x, y = layout.cell(i - 1)
            _paste_thumbnail(sheet, image, layout, x, y)
            draw.text((x + layout.thumb_width / 2, y + layout.thumb_height + layout.label_height / 2),
                      str(frame.frame), fill=LABEL_COLOUR, font=font, anchor="mm")
            if on_progress:
                on_progress(i, len(chosen))
        sheet.save(partial, format="PNG")
    return Preview(job_id, state, total, out, len(chosen), layout.width, layout.height, layout.columns, layout.rows)


def _check_sheet_size(layout: SheetLayout, count: int) -> None:
    if layout.width * layout.height > SHEET_MAX_PIXELS:
        raise InputError(f"contact sheet: {count} frames {layout.thumb_width} px wide make a {layout.width}x"
                         f"{layout.height} sheet, over the limit of {SHEET_MAX_PIXELS:,} pixels "
                         "(choose fewer frames with --frames, or a smaller --width)")


def _paste_thumbnail(sheet, image, layout: SheetLayout, x: int, y: int) -> None:
    """Fit `image` in the thumbnail box, keeping its shape (a frame of another shape is centred)."""
    from PIL import Image

    box_w, box_h = layout.thumb_width, layout.thumb_height
    ratio = min(box_w / image.width, box_h / image.height)
    fit = (max(1, round(image.width * ratio)), max(1, round(image.height * ratio)))
    if abs(fit[0] - box_w) <= 1 and abs(fit[1] - box_h) <= 1:
        fit = (box_w, box_h)  # the usual case: the box was made from this shape; fill it exactly
    # reducing_gap: a 4K frame is first shrunk by a fast integer reduction, then filtered.
    thumb = image.resize(fit, Image.Resampling.LANCZOS, reducing_gap=3.0)
    sheet.paste(thumb, (x + (box_w - fit[0]) // 2, y + (box_h - fit[1]) // 2))


def movie(
    settings: Settings, job: str, out: Path, *, fps: float | None = None, frames: str | None = None,
    on_progress: Progress | None = None,
) -> Preview:
    """Encode the finished frames of `job` (an id or unique prefix), in frame order, as an H.264
    MP4 (yuv420p) at `out`, `fps` frames a second (None: the rate the job's scene asks for, else
    FPS_DEFAULT). The first frame sets the size (an odd width or height gains one repeated
    pixel); a later frame of another size is scaled to it."""
    import numpy as np
    from PIL import Image

    given = None if fps is None else check_fps(fps)
    out = check_output(Path(out), ".mp4")
    job_id, state, total, scene_key = find_job(settings, job)
    storage, chosen = _chosen_frames(settings, job_id, state, frames)
    rate, fps_from = (given, "--fps") if given is not None else _scene_rate(storage, scene_key)
    size: tuple[int, int] | None = None
    encoder: H264Encoder | None = None
    with _writing(out) as partial, _streamed(storage, chosen) as fetched:
        try:
            for i, (frame, path) in enumerate(fetched, 1):
                rgb = read_display_frame(path, frame.key)
                if size is None:
                    size = (rgb.shape[1], rgb.shape[0])
                    padded = (size[0] + size[0] % 2, size[1] + size[1] % 2)
                    encoder = H264Encoder(partial, padded, rate)
                elif (rgb.shape[1], rgb.shape[0]) != size:
                    rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
                encoder.write(pad_even(rgb))
                if on_progress:
                    on_progress(i, len(chosen))
            encoder.finish()
        finally:
            if encoder is not None:
                encoder.stop()
    return Preview(job_id, state, total, out, len(chosen), *encoder.size, fps=float(rate), fps_from=fps_from)


def _scene_rate(storage: Storage, scene_key: str) -> tuple[Fraction, str]:
    """The frame rate the job's scene asks for, else FPS_DEFAULT; and where it came from."""
    from renderfarm.framerate import scene_fps

    fps, where = scene_fps(storage, scene_key)
    if fps is None or not 0 < fps <= FPS_MAX:
        return check_fps(FPS_DEFAULT), f"the default: {where}"
    return check_fps(fps), where


def pad_even(rgb: np.ndarray) -> np.ndarray:
    """`rgb` with its last column and row repeated where its width or height is odd."""
    import numpy as np

    height, width = rgb.shape[:2]
    if width % 2 == 0 and height % 2 == 0:
        return rgb
    return np.pad(rgb, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")


class H264Encoder:
    """ffmpeg (imageio-ffmpeg's binary) reading raw RGB frames on stdin, writing an MP4."""

    def __init__(self, path: Path, size: tuple[int, int], fps: Fraction) -> None:
        import imageio_ffmpeg

        self.path = path
        self.size = size
        argv = [
            imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{size[0]}x{size[1]}", "-r", str(fps),
            "-i", "pipe:0", "-an",
            # BT.709 conversion, tagged as such: untagged video is read as BT.601 or BT.709
            # depending on the player and the size, which shifts the hues.
            # (setparams: ffmpeg takes the tags from the frames, not from -colorspace and kin).
            "-vf", ("scale=out_color_matrix=bt709:out_range=tv,"
                    "setparams=colorspace=bt709:color_primaries=bt709:color_trc=bt709:range=tv"),
            "-c:v", "libx264", "-preset", H264_PRESET, "-crf", str(H264_CRF), "-pix_fmt", "yuv420p",
            "-movflags", "+faststart", "-f", "mp4", str(path),
        ]
        self._log = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log)
        except OSError as e:
            self._log.close()
            raise RenderError(f"movie: cannot run ffmpeg ({e.strerror or e})") from None

    def write(self, rgb: np.ndarray) -> None:
        import numpy as np

        try:
            self._proc.stdin.write(memoryview(np.ascontiguousarray(rgb, dtype=np.uint8)).cast("B"))
        except (BrokenPipeError, OSError):
            self._proc.wait()
            raise self._failure() from None

    def finish(self) -> None:
        """Close ffmpeg's input and wait for it to write the file."""
        with suppress(OSError):  # a broken pipe: ffmpeg has failed, and says why below
            self._proc.stdin.close()
        if self._proc.wait() != 0:
            raise self._failure()

    def stop(self) -> None:
        """Kill ffmpeg if it still runs (an error or Ctrl-C cut the movie short)."""
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        with suppress(OSError):
            self._proc.stdin.close()
        self._log.close()

    def _failure(self) -> RenderError:
        self._log.seek(0)
        lines = [line.strip() for line in self._log.read().decode("utf-8", "replace").splitlines()]
        reason = next((line for line in reversed(lines) if line), "no message")
        return RenderError(f"movie: ffmpeg exited {self._proc.returncode} ({reason[:300]})")


def find_job(settings: Settings, ref: str) -> tuple[str, str, int, str]:
    """The id, state, frame count and scene key of the job `ref` (an id or unique prefix) names."""
    from renderfarm.db import session_scope
    from renderfarm.status import reader_engine, resolve_job

    engine = reader_engine(settings)
    if engine is None:
        raise NotFoundError(f"job {ref!r}: no such job (no job was ever submitted here)")
    try:
        with session_scope(engine) as session:
            job = resolve_job(session, ref)
            return job.id, job.state, job.frame_count, job.scene_key
    finally:
        engine.dispose()


def _chosen_frames(settings: Settings, job_id: str, state: str, spec: str | None) -> tuple[Storage, list[StoredFrame]]:
    """The storage and the job's finished frames to show (those of `spec`, if given)."""
    from renderfarm.storage import open_storage

    storage = open_storage(settings)
    found = stored_frames(storage, job_id)
    if not found:
        raise NotFoundError(f"job {job_id}: no finished frames in storage yet (the job is {state})")
    if spec is None:
        return storage, found
    from renderfarm.frames import parse_frames

    wanted = set(parse_frames(spec))
    chosen = [f for f in found if f.frame in wanted]
    if not chosen:
        raise NotFoundError(f"frames: none of {spec!r} is finished in job {job_id} ({len(found)} other frames are)")
    return storage, chosen


@contextmanager
def _streamed(storage: Storage, frames: list[StoredFrame]) -> Iterator[Iterator[tuple[StoredFrame, Path]]]:
    """`_fetched` into a temporary directory, both cleaned up however the block ends."""
    with tempfile.TemporaryDirectory(prefix="farm-preview-") as tmp, closing(_fetched(storage, frames, Path(tmp))) as fetched:
        yield fetched


def _fetched(storage: Storage, frames: list[StoredFrame], directory: Path) -> Iterator[tuple[StoredFrame, Path]]:
    """Each frame downloaded into `directory`, in order, deleted once the caller moves on;
    up to PREFETCH more download meanwhile."""
    from concurrent.futures import ThreadPoolExecutor

    from renderfarm.storage.retry import retrying

    def download(frame: StoredFrame) -> Path:
        path = directory / f"{secrets.token_hex(6)}{Path(frame.key).suffix}"
        retrying(f"download {frame.key}", lambda: storage.download_file(frame.key, path), within=DOWNLOAD_RETRY)
        return path

    pool = ThreadPoolExecutor(max_workers=PREFETCH, thread_name_prefix="preview-download")
    upcoming = iter(frames)
    pending = deque((f, pool.submit(download, f)) for f in islice(upcoming, PREFETCH + 1))
    try:
        while pending:
            frame, future = pending.popleft()
            path = future.result()
            try:
                yield frame, path
            finally:
                path.unlink(missing_ok=True)
            following = next(upcoming, None)
            if following is not None:
                pending.append((following, pool.submit(download, following)))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def _writing(out: Path) -> Iterator[Path]:
    """A partial file beside `out`, created now (so an unwritable output fails before any work)
    and renamed to `out` when the block succeeds; removed when it fails."""
    partial = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.partial{out.suffix}"
    try:
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as e:
        raise InputError(f"output: cannot write {str(out)!r} ({e.strerror or e})") from None
    try:
        yield partial
        try:
            os.replace(partial, out)
        except OSError as e:
            raise InputError(f"output: cannot write {str(out)!r} ({e.strerror or e})") from None
    finally:
        partial.unlink(missing_ok=True)
