"""Image formats the farm writes and checks: 8-bit PNG (Pillow), 16-bit PNG and EXR (OpenImageIO).

    png     8-bit RGB PNG, gamma 2 (sqrt) from linear, written by Pillow
    png16   16-bit RGB PNG, the same curve quantized to 16 bits, written by OpenImageIO
    exr     float RGBA OpenEXR, linear, alpha 1, written by OpenImageIO

Pillow holds neither 16-bit colour nor EXR, hence OpenImageIO for those two. Every write is
atomic (a temporary name in the same directory, then os.replace) and deterministic: fixed
compression, no timestamps, so the same pixels always give the same bytes, whichever way they
were assembled. Decoding is strict: the file's signature is checked before any decoder sees
it, the format is named (Pillow never guesses), and the pixel count is capped before decoding.
Files from other renderers may also be RGBA (PNG) or RGB and half floats (EXR): they are
accepted, and kept as they are.

numpy, Pillow and OpenImageIO are imported inside the functions that use them, so the CLI can
name and check formats without loading them.
"""

from __future__ import annotations

import io
import os
import secrets
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from renderfarm.errors import InputError, VerificationError

if TYPE_CHECKING:
    import numpy as np

FORMATS: tuple[str, ...] = ("png", "png16", "exr")
MAX_PIXELS = 16384 * 16384
"""The most pixels an image may have to be decoded at all (checked from its header)."""

PNG_COMPRESSION = 6
"""zlib level of 8-bit PNGs: what the builtin renderer has always written (Pillow's default)."""

PNG16_COMPRESSION = 3
"""zlib level of 16-bit PNGs. Their low bytes are mostly noise, so higher levels cost time for
little: on a noisy 1920x1080 render level 3 wrote 8.65 MB in 0.6 s, level 6 8.67 MB in 1.1 s,
level 1 8.71 MB in 0.44 s; on a smooth gradient level 3 was 0.41 MB to level 1's 0.91 MB."""

EXR_COMPRESSION = "zip"
"""Lossless, OpenEXR's usual choice for final frames."""

# Gamma 2.0: stops OpenImageIO tagging 16-bit PNGs as sRGB (sRGB, gAMA and cHRM chunks), which
# the curve is not; the file then carries no colour chunk, like the 8-bit PNGs Pillow writes.
_PNG16_COLOUR_SPACE = "g20_rec709"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the empty IEND chunk every PNG ends with
_EXR_MAGIC = b"\x76\x2f\x31\x01"
_PNG_COLOUR_TYPES = {2: "RGB", 6: "RGBA"}  # IHDR colour type -> channels accepted
_WRITE_BAND_ROWS = 64  # a multiple of the 16 rows OpenEXR compresses together
_OIIO_FORMAT = {"png16": "png", "exr": "openexr"}
_NAMES = {"png": "8-bit PNG", "png16": "16-bit PNG", "exr": "EXR"}


def extension(fmt: str) -> str:
    """The file extension of a format, without its dot: png and png16 are both `png`."""
    return "exr" if check_format(fmt) == "exr" else "png"


def check_format(fmt: str) -> str:
    """`fmt` itself when it is one of FORMATS; InputError otherwise."""
    if fmt not in FORMATS:
        raise InputError(f"format: {fmt!r} is not one of {', '.join(FORMATS)}")
    return fmt


def to_8bit(linear: np.ndarray) -> np.ndarray:
    """Linear colour to 8-bit with gamma 2: a square root, exactly rounded, unlike a power."""
    import numpy as np

    encoded = np.sqrt(np.clip(linear, 0.0, 1.0)) * 255.0 + 0.5
    return np.floor(encoded).astype(np.uint8)


def to_16bit(linear: np.ndarray) -> np.ndarray:
    """Linear colour to 16-bit with the same gamma-2 curve as `to_8bit`."""
    import numpy as np

    encoded = np.sqrt(np.clip(linear, 0.0, 1.0)) * 65535.0 + 0.5
    return np.floor(encoded).astype(np.uint16)


def to_float_rgba(linear: np.ndarray) -> np.ndarray:
    """Linear colour as float32 RGBA with alpha 1, unclipped (EXR keeps highlights above 1)."""
    import numpy as np

    height, width, _ = linear.shape
    rgba = np.empty((height, width, 4), dtype=np.float32)
    rgba[:, :, :3] = linear
    rgba[:, :, 3] = 1.0
    return rgba


def encode_linear(linear: np.ndarray, fmt: str, path: str | os.PathLike[str]) -> None:
    """Write linear float RGB pixels (height, width, 3) to `path` in format `fmt`, atomically."""
    check_format(fmt)
    if fmt == "png":
        pixels = to_8bit(linear)
    elif fmt == "png16":
        pixels = to_16bit(linear)
    else:
        pixels = to_float_rgba(linear)
    write_pixels(pixels, fmt, path)


def write_pixels(
    pixels: np.ndarray, fmt: str, path: str | os.PathLike[str], *,
    channel_names: tuple[str, ...] | None = None,
) -> None:
    """Write pixels already in the file's type (uint8 for png, uint16 for png16, float32 or
    float16 for exr; 3 or 4 channels) to `path`, atomically and deterministically.
    `channel_names` are EXR's (default R, G, B[, A])."""
    check_format(fmt)
    path = os.fspath(path)
    directory, name = os.path.split(path)
    partial = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    try:
        if fmt == "png":
            _write_with_pillow(pixels, partial)
        else:
            _write_with_oiio(pixels, fmt, partial, channel_names)
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.unlink(partial)
        raise


def _write_with_pillow(pixels: np.ndarray, path: str) -> None:
    from PIL import Image

    # No metadata and a fixed compression level: the same pixels give the same bytes.
    Image.fromarray(pixels).save(path, format="PNG", compress_level=PNG_COMPRESSION)


def _write_with_oiio(
    pixels: Any, fmt: str, path: str, channel_names: tuple[str, ...] | None
) -> None:
    import OpenImageIO as oiio

    height, width, channels = pixels.shape
    kind = {"uint16": "uint16", "float32": "float", "float16": "half"}[pixels.dtype.name]
    spec = oiio.ImageSpec(width, height, channels, kind)
    if fmt == "png16":
        spec.attribute("png:compressionLevel", PNG16_COMPRESSION)
        spec.attribute("oiio:UnassociatedAlpha", 1)  # RGBA values are straight alpha already
        spec.attribute("oiio:ColorSpace", _PNG16_COLOUR_SPACE)
    else:
        spec.attribute("compression", EXR_COMPRESSION)
        spec.attribute("DateTime", "")  # else OpenImageIO stamps the time of writing
        if channel_names is not None:
            spec.channelnames = channel_names
    output = oiio.ImageOutput.create(_OIIO_FORMAT[fmt])
    if output is None:
        raise OSError(f"OpenImageIO cannot write {fmt}: {oiio.geterror()}")
    if not output.open(path, spec):
        raise OSError(f"{path}: {output.geterror()}")
    try:
        # In bands: given the whole array at once, the binding copies all of it first (an 8K
        # 16-bit frame is 200 MB). The bytes written are the same either way.
        for top in range(0, height, _WRITE_BAND_ROWS):
            bottom = min(height, top + _WRITE_BAND_ROWS)
            if not output.write_scanlines(top, bottom, 0, pixels[top:bottom]):
                raise OSError(f"{path}: {output.geterror()}")
    finally:
        if not output.close():
            raise OSError(f"{path}: {output.geterror()}")


@dataclass(frozen=True)
class Layout:
    """What a decoded image holds, beyond its size: element type and channel names."""

    dtype: str  # numpy's name: uint8, uint16, float16, float32
    channels: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.dtype} {','.join(self.channels)}"


def check_image(data: bytes, *, fmt: str, width: int, height: int, what: str) -> None:
    """Decode `data` fully; VerificationError naming `what` unless it is a `width`x`height`
    image of format `fmt` (8-bit RGB/RGBA PNG, 16-bit RGB/RGBA PNG, or EXR of 3 or 4 half or
    float channels)."""
    check_format(fmt)
    if fmt in ("png", "png16"):
        scan_png(data, fmt, width=width, height=height, what=what)
        return
    # OpenImageIO's Python binding reads only files, not memory.
    with tempfile.NamedTemporaryFile(suffix="." + extension(fmt)) as file:
        file.write(data)
        file.flush()
        read_pixels(file.name, fmt, width=width, height=height, what=what)


def scan_png(data: bytes, fmt: str, *, width: int, height: int, what: str) -> None:
    """Check a PNG as a decoder reads it, without building its pixels: the signature, every
    chunk's length and CRC, the IHDR (size, 8- or 16-bit RGB/RGBA, compression, filter and
    interlace methods), the IDAT chunks in one run, the image data inflated whole (its zlib
    stream complete, checksum included) to exactly the bytes that size and layout need, a
    valid filter type at the head of every scanline, and nothing after IEND. What is left,
    undoing the scanline filters, is arithmetic that cannot fail: an image passing here decodes
    (tests/test_png_scan.py holds it to Pillow's and OpenImageIO's verdicts), at a third to a
    sixth of their cost: the manager checks every frame of the farm."""
    name = _NAMES[fmt]
    if not data:
        raise VerificationError(f"{what}: empty file, expected {name}")
    size = _png_header(data[:64], fmt, what)
    _check_size(size, width, height, what)
    if len(data) < 33 or data[8:12] != b"\x00\x00\x00\x0d":
        raise VerificationError(f"{what}: not a PNG file, expected {name}")
    compression, filtering, interlace = data[26:29]
    if compression or filtering or interlace > 1:
        raise VerificationError(f"{what}: an unknown PNG compression, filter or interlace method, expected {name}")
    idat, state, pos, end = [], "before", 8, len(data)
    view = memoryview(data)
    while True:
        if pos + 12 > end:
            raise VerificationError(f"{what}: truncated {name} (a chunk is cut short)")
        length, kind = struct.unpack_from(">I4s", data, pos)
        stop = pos + 12 + length
        if length > 0x7FFFFFFF or stop > end:
            raise VerificationError(f"{what}: truncated {name} (a chunk is cut short)")
        if not kind.isalpha() or kind[2] & 0x20:  # the third letter's case is reserved: upper
            raise VerificationError(f"{what}: not a decodable {name} (invalid chunk type {kind!r})")
        if zlib.crc32(view[pos + 4 : stop - 4]) != struct.unpack_from(">I", data, stop - 4)[0]:
            raise VerificationError(f"{what}: not a decodable {name} (chunk {kind!r} fails its CRC)")
        if kind == b"IDAT":
            if state == "after":
                raise VerificationError(f"{what}: not a decodable {name} (its IDAT chunks are not in one run)")
            state = "in"
            idat.append(view[pos + 8 : stop - 4])
        elif kind == b"IEND":
            if length:
                raise VerificationError(f"{what}: not a decodable {name} (its IEND chunk holds data)")
            break
        elif state == "in":
            state = "after"
        if kind[0] & 0x20 == 0 and kind not in (b"IHDR", b"PLTE", b"IDAT") or (kind == b"IHDR" and pos != 8):
            raise VerificationError(f"{what}: not a decodable {name} (unexpected critical chunk {kind!r})")
        pos = stop
    if stop != end:
        raise VerificationError(f"{what}: not a decodable {name} ({end - stop} bytes after its IEND chunk)")
    if not idat:
        raise VerificationError(f"{what}: not a decodable {name} (no IDAT chunk)")
    channels = 3 if data[25] == 2 else 4
    pixel = channels * (2 if fmt == "png16" else 1)
    lines = _scanlines(width, height, pixel, bool(interlace))
    _inflate_scanlines(idat, lines, sum(rows * stride for _, stride, rows in lines), what, name)


_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_INFLATE_PIECE = 1 << 20  # bytes of image data inflated at a time: memory stays small whatever the size


def _scanlines(width: int, height: int, pixel: int, interlaced: bool) -> list[tuple[int, int, int]]:
    """Where the scanlines lie in the inflated data: (offset, bytes a line, lines) for the whole
    image, or for each Adam7 pass (an empty pass has no lines at all)."""
    passes = _ADAM7 if interlaced else ((0, 0, 1, 1),)
    out, offset = [], 0
    for x0, y0, dx, dy in passes:
        cols, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if cols > 0 and rows > 0:
            out.append((offset, 1 + cols * pixel, rows))
            offset += rows * (1 + cols * pixel)
    return out


def _inflate_scanlines(idat: list, lines: list[tuple[int, int, int]], expected: int, what: str, name: str) -> None:
    inflater = zlib.decompressobj()
    seen = 0
    try:
        for chunk in idat:
            pending = chunk
            while pending and not inflater.eof:
                piece = inflater.decompress(pending, _INFLATE_PIECE)
                pending = inflater.unconsumed_tail
                while len(piece) == _INFLATE_PIECE and not pending and not inflater.eof:
                    _filters_valid(piece, seen, lines, expected, what, name)  # output may wait in zlib
                    seen += len(piece)
                    piece = inflater.decompress(b"", _INFLATE_PIECE)
                _filters_valid(piece, seen, lines, expected, what, name)
                seen += len(piece)
    except zlib.error as e:
        raise VerificationError(f"{what}: not a decodable {name} (its image data does not inflate: {e})") from None
    if not inflater.eof or seen != expected:
        raise VerificationError(f"{what}: truncated {name} ({seen:,} of {expected:,} bytes of image data)")


def _filters_valid(piece: bytes, seen: int, lines: list[tuple[int, int, int]], expected: int, what: str,
                   name: str) -> None:
    """Check the filter type (0-4) of each scanline starting in `piece`, the inflated bytes
    from offset `seen`."""
    end = seen + len(piece)
    if end > expected:
        raise VerificationError(f"{what}: not a decodable {name} (more image data than its size holds)")
    for offset, stride, rows in lines:
        last = offset + stride * (rows - 1)
        if last < seen or offset >= end:
            continue
        first = offset + max(0, -(-(seen - offset) // stride)) * stride
        heads = piece[first - seen : min(end, last + 1) - seen : stride]
        if heads and max(heads) > 4:
            raise VerificationError(f"{what}: not a decodable {name} (a scanline has unknown filter type {max(heads)})")


def read_pixels(
    source: str | os.PathLike[str] | bytes, fmt: str, *,
    width: int | None = None, height: int | None = None, what: str | None = None,
) -> np.ndarray:
    """Decode an image fully into (height, width, channels) in the file's own type (uint8,
    uint16, float16 or float32). VerificationError, naming `what` (default: the path), when it
    is not a decodable image of format `fmt`, or not `width`x`height` where those are given.
    `source` is a path, or the bytes themselves (8-bit PNG only)."""
    pixels, _ = read_image(source, fmt, width=width, height=height, what=what)
    return pixels


def read_image(
    source: str | os.PathLike[str] | bytes, fmt: str, *,
    width: int | None = None, height: int | None = None, what: str | None = None,
) -> tuple[np.ndarray, Layout]:
    """`read_pixels`, also returning the image's layout."""
    check_format(fmt)
    if what is None:
        what = "image" if isinstance(source, bytes) else os.fspath(source)
    if isinstance(source, bytes):
        if fmt != "png":
            raise ValueError("only 8-bit PNGs are decoded from bytes; write the others to a file")
        head = source[:64]
    else:
        try:
            with open(source, "rb") as file:
                head = file.read(64)
        except OSError as e:
            raise VerificationError(f"{what}: cannot be read ({e.strerror or e})") from None
    name = _NAMES[fmt]
    if not head:
        raise VerificationError(f"{what}: empty file, expected {name}")
    if fmt == "exr":
        _exr_header(head, what)
    else:
        _check_size(_png_header(head, fmt, what), width, height, what)
        # libpng stops reading once it has the pixels: a PNG cut short after them decodes.
        if _png_tail(source) != _PNG_END:
            raise VerificationError(f"{what}: truncated {name} (it does not end in an IEND chunk)")
    try:
        if fmt == "png":
            pixels, layout = _decode_with_pillow(source)
        else:
            pixels, layout = _decode_with_oiio(os.fspath(source), fmt, what)
    except VerificationError:
        raise
    except Exception as e:  # decoders raise many types for corrupt data
        raise VerificationError(f"{what}: {_undecodable(source, fmt)} ({_reason(e)})") from None
    _check_size((pixels.shape[1], pixels.shape[0]), width, height, what)
    return pixels, layout


def _png_header(head: bytes, fmt: str, what: str) -> tuple[int, int]:
    """Check the PNG signature and IHDR (bit depth, colour type); return (width, height)."""
    name = _NAMES[fmt]
    if not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR" or len(head) < 29:
        raise VerificationError(f"{what}: not a PNG file, expected {name}")
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    wanted = 8 if fmt == "png" else 16
    if depth != wanted or colour not in _PNG_COLOUR_TYPES:
        kind = _PNG_COLOUR_TYPES.get(colour, f"colour type {colour}")
        article = "an" if depth == 8 else "a"
        raise VerificationError(
            f"{what}: {article} {depth}-bit {kind} PNG, expected {name} (RGB or RGBA)"
        )
    if width * height > MAX_PIXELS:
        raise VerificationError(
            f"{what}: {width}x{height} pixels, over the limit of {MAX_PIXELS:,}"
        )
    return width, height


def _exr_header(head: bytes, what: str) -> None:
    # The size is among the header's attributes: OpenImageIO reads it before any pixels.
    if not head.startswith(_EXR_MAGIC):
        raise VerificationError(f"{what}: not an OpenEXR file, expected EXR")


def _check_size(size: tuple[int, int], width: int | None, height: int | None, what: str) -> None:
    if width is not None and height is not None and size != (width, height):
        raise VerificationError(f"{what}: {size[0]}x{size[1]} pixels, expected {width}x{height}")


def _decode_with_pillow(source: str | os.PathLike[str] | bytes) -> tuple[Any, Layout]:
    import numpy as np
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # our own cap, checked from the header already

    def stream() -> Any:
        return io.BytesIO(source) if isinstance(source, bytes) else Path(source)

    with Image.open(stream(), formats=["PNG"]) as img:
        img.verify()  # every chunk's CRC: load() alone skips those of the pixel data
    with Image.open(stream(), formats=["PNG"]) as img:
        img.load()
        pixels = np.asarray(img)
        mode = img.mode
    return pixels, Layout("uint8", tuple(mode))


def _decode_with_oiio(path: str, fmt: str, what: str) -> tuple[Any, Layout]:
    import OpenImageIO as oiio

    name = _NAMES[fmt]
    config = oiio.ImageSpec()
    config.attribute("oiio:UnassociatedAlpha", 1)  # PNG alpha is straight: keep values as stored
    image = oiio.ImageInput.open(path, config)
    if image is None:
        reason = _oiio_reason(oiio.geterror())
        raise VerificationError(f"{what}: {_undecodable(path, fmt)} ({reason})")
    try:
        if image.format_name() != _OIIO_FORMAT[fmt]:
            raise VerificationError(f"{what}: a {image.format_name()} file, expected {name}")
        spec = image.spec()
        if spec.width * spec.height > MAX_PIXELS:
            raise VerificationError(
                f"{what}: {spec.width}x{spec.height} pixels, over the limit of {MAX_PIXELS:,}"
            )
        kind = str(spec.format)
        if fmt == "exr":
            if spec.deep or spec.nchannels not in (3, 4) or kind not in ("half", "float"):
                raise VerificationError(
                    f"{what}: an EXR of {spec.nchannels} {kind} channels, expected 3 or 4 "
                    "half or float channels"
                )
            if len(set(spec.channelformats)) > 1:
                raise VerificationError(f"{what}: an EXR mixing channel types, expected one type")
        elif kind != "uint16":
            raise VerificationError(f"{what}: a {kind} PNG, expected {name}")
        pixels = image.read_image(spec.format)
        if pixels is None or image.has_error:
            reason = _oiio_reason(image.geterror())
            raise VerificationError(f"{what}: {_undecodable(path, fmt)} ({reason})")
        if pixels.ndim == 2:  # OpenImageIO drops the channel axis of one-channel images only
            pixels = pixels[:, :, None]
        layout = Layout(pixels.dtype.name, tuple(spec.channelnames))
    finally:
        image.close()
    return pixels, layout


def _undecodable(source: str | os.PathLike[str] | bytes, fmt: str) -> str:
    """What to call an image that failed to decode: truncated, when a PNG lacks its IEND chunk."""
    name = _NAMES[fmt]
    if fmt != "exr" and _png_tail(source) != _PNG_END:
        return f"truncated {name}"
    return f"not a decodable {name}"


def _png_tail(source: str | os.PathLike[str] | bytes) -> bytes:
    if isinstance(source, bytes):
        return source[-len(_PNG_END):]
    with open(source, "rb") as file:
        file.seek(max(0, os.fstat(file.fileno()).st_size - len(_PNG_END)))
        return file.read()


def _oiio_reason(message: str) -> str:
    return " ".join(message.split())[:200] or "no reason given"


def _reason(error: Exception) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
