"""The manager's PNG check (renderfarm.images.scan_png) against real decoders: it accepts what
they decode and refuses what they refuse, on PNGs built here byte by byte (8- and 16-bit, RGB and
RGBA, plain and Adam7-interlaced, every filter type) and on thousands of damaged ones, their
chunk CRCs made good again so that the damage reaches the image data. Pillow decodes the 8-bit
ones from memory as the manager used to; OpenImageIO (libpng) the 16-bit ones from a file."""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from renderfarm.errors import VerificationError
from renderfarm.images import _ADAM7, check_image, read_pixels, scan_png

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_lines(pixels: np.ndarray, interlaced: bool, rng: random.Random) -> bytes:
    """The scanlines of `pixels` (H, W, C, big-endian), each behind a filter type picked at
    random. The filter is only declared, not applied: the pixels differ, the file is as valid."""
    height, width = pixels.shape[:2]
    out = bytearray()
    for x0, y0, dx, dy in _ADAM7 if interlaced else ((0, 0, 1, 1),):
        part = pixels[y0::dy, x0::dx]
        if part.size == 0:
            continue
        for row in part:
            out.append(rng.randrange(5))
            out += row.tobytes()
    return bytes(out)


def make_png(width: int, height: int, *, channels: int = 3, depth: int = 8, interlaced: bool = False,
             seed: int = 0, idat_parts: int = 1, extra: bytes = b"") -> bytes:
    rng = random.Random(seed)
    dtype = ">u2" if depth == 16 else "u1"
    pixels = np.array([rng.randrange(2**depth) for _ in range(width * height * channels)], dtype=dtype)
    raw = raw_lines(pixels.reshape(height, width, channels), interlaced, rng)
    packed = zlib.compress(raw, 6)
    cut = [len(packed) * i // idat_parts for i in range(idat_parts + 1)]
    ihdr = struct.pack(">IIBBBBB", width, height, depth, 2 if channels == 3 else 6, 0, 0, int(interlaced))
    return (SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"tEXt", b"Software\x00test") + extra
            + b"".join(chunk(b"IDAT", packed[a:b]) for a, b in zip(cut, cut[1:])) + chunk(b"IEND", b""))


def decodes(data: bytes, fmt: str, width: int, height: int, tmp: Path) -> bool:
    """The reference verdict: the check the manager made before (Pillow from memory for 8-bit
    PNGs, OpenImageIO from a file for 16-bit ones), and libpng's own (through OpenImageIO)."""
    import OpenImageIO as oiio

    tmp.write_bytes(data)
    try:
        read_pixels(data if fmt == "png" else tmp, fmt, width=width, height=height)
    except VerificationError:
        return False
    image = oiio.ImageInput.open(str(tmp))
    if image is None:
        oiio.geterror()
        return False
    try:
        spec = image.spec()
        pixels = image.read_image(0, 0, 0, spec.nchannels, "uint16" if fmt == "png16" else "uint8")
        ok = pixels is not None and not image.has_error and (spec.width, spec.height) == (width, height) \
            and spec.nchannels in (3, 4) and str(spec.format) == ("uint16" if fmt == "png16" else "uint8")
        image.geterror()
        return ok
    finally:
        image.close()


def scans(data: bytes, fmt: str, width: int, height: int) -> bool:
    try:
        scan_png(data, fmt, width=width, height=height, what="x")
    except VerificationError:
        return False
    return True


def fmt_of(shape: dict) -> str:
    return "png16" if shape["depth"] == 16 else "png"


SHAPES = [dict(width=w, height=h, channels=c, depth=d, interlaced=i)
          for w, h in ((1, 1), (3, 5), (17, 9), (64, 33)) for c in (3, 4) for d in (8, 16) for i in (False, True)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "{width}x{height}x{channels}-{depth}bit{}".format(
    "-adam7" if s["interlaced"] else "", **s))
def test_valid_pngs_pass_as_the_decoders_pass_them(shape, tmp_path):
    for parts in (1, 3):
        data = make_png(**shape, idat_parts=parts, seed=parts)
        fmt, size = fmt_of(shape), (shape["width"], shape["height"])
        assert decodes(data, fmt, *size, tmp_path / "x.png")
        assert scans(data, fmt, *size)
        check_image(data, fmt=fmt, width=size[0], height=size[1], what="x")


def test_pillows_own_pngs_pass(tmp_path):
    import io

    for mode, size in (("RGB", (320, 180)), ("RGBA", (33, 7))):
        for options in ({}, {"compress_level": 1}, {"optimize": True}):
            buf = io.BytesIO()
            Image.effect_noise(size, 40).convert(mode).save(buf, format="PNG", **options)
            assert scans(buf.getvalue(), "png", *size)


def damage(data: bytes, rng: random.Random) -> bytes:
    """Damage a PNG one way, then fix every chunk's CRC, so that only the damage itself remains
    to be caught (a bad CRC alone is caught trivially)."""
    how = rng.randrange(7)
    body = bytearray(data)
    if how == 0:  # cut short
        body = body[: rng.randrange(8, len(body))]
    elif how == 1:  # bytes flipped in the compressed image data or anywhere
        for _ in range(rng.randrange(1, 4)):
            body[rng.randrange(8, len(body))] ^= 1 << rng.randrange(8)
    elif how == 2:  # the image data inflates to the wrong size, or has a bad filter type
        return rebuild(data, rng)
    elif how == 3:  # a chunk length changed
        pos = 8
        for _ in range(rng.randrange(1, 4)):
            length = struct.unpack_from(">I", body, pos)[0]
            if pos + 12 + length >= len(body):
                break
            pos += 12 + length
        struct.pack_into(">I", body, pos, max(0, struct.unpack_from(">I", body, pos)[0] + rng.choice((-3, -1, 1, 5))))
    elif how == 4:  # bytes after IEND, or an IEND with data
        body += bytes(rng.randrange(1, 9)) if rng.random() < 0.5 else b""
        if len(body) == len(data):
            return data[:-12] + chunk(b"IEND", b"x")
    elif how == 5:  # IHDR fields
        body[rng.choice((24, 25, 26, 27, 28))] = rng.randrange(256)
    else:  # another critical chunk, or an IDAT after a later chunk
        extra = chunk(b"ABCD", b"x") if rng.random() < 0.5 else chunk(b"IDAT", b"")
        end = len(body) - 12
        body = body[:end] + extra + body[end:]
    return fix_crcs(bytes(body))


def fix_crcs(data: bytes) -> bytes:
    body, pos = bytearray(data), 8
    while pos + 12 <= len(body):
        length = struct.unpack_from(">I", body, pos)[0]
        end = pos + 12 + length
        if end > len(body):
            break
        struct.pack_into(">I", body, end - 4, zlib.crc32(bytes(body[pos + 4 : end - 4])))
        pos = end
    return bytes(body)


def rebuild(data: bytes, rng: random.Random) -> bytes:
    """The same PNG with its image data inflated, changed (a byte more or less, a filter type
    of 5 or more, the zlib stream cut before its checksum) and compressed again."""
    ihdr, parts, pos = data[8:33], [], 33
    while True:
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"IDAT":
            parts.append(data[pos + 8 : pos + 8 + length])
        if kind == b"IEND":
            break
        pos += 12 + length
    raw = bytearray(zlib.decompress(b"".join(parts)))
    how = rng.randrange(4)
    if how == 0:
        raw = raw[:-1]
    elif how == 1:
        raw += b"\x00"
    elif how == 2:
        raw[0] = rng.randrange(5, 256)  # the first scanline's filter type
    packed = zlib.compress(bytes(raw))
    if how == 3:
        packed = packed[:-4]  # the Adler-32 checksum gone
    return SIGNATURE + ihdr + chunk(b"IDAT", packed) + chunk(b"IEND", b"")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.sampled_from(SHAPES), seed=st.integers(0, 2**32 - 1))
def test_damaged_pngs_get_the_decoders_verdict(shape, seed, tmp_path):
    rng = random.Random(seed)
    data = damage(make_png(**shape, seed=seed, idat_parts=rng.randrange(1, 4)), rng)
    fmt, size = fmt_of(shape), (shape["width"], shape["height"])
    reference = decodes(data, fmt, *size, tmp_path / "x.png")
    # Never looser than the decoders. Stricter only where no encoder goes: image data that
    # inflates to more bytes than the image holds, a zlib stream without its checksum, or an
    # unknown critical chunk after the image data (Pillow and libpng stop reading once they
    # have the pixels; the PNG specification has a decoder refuse such a chunk).
    if not reference:
        assert not scans(data, fmt, *size), data.hex()
    elif not scans(data, fmt, *size):
        complete, size = inflated(data)
        assert not complete or size > expected_size(data) or unknown_critical(data), data.hex()


def inflated(data: bytes) -> tuple[bool, int]:
    """Whether the image data's zlib stream is complete, and how many bytes it inflates to."""
    parts, pos = [], 8
    while pos + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"IDAT":
            parts.append(data[pos + 8 : pos + 8 + length])
        pos += 12 + length
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(b"".join(parts))
    except zlib.error:
        return False, 0
    return inflater.eof, len(out)


def unknown_critical(data: bytes) -> bool:
    pos = 8
    while pos + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind[0] & 0x20 == 0 and kind not in (b"IHDR", b"PLTE", b"IDAT", b"IEND"):
            return True
        pos += 12 + length
    return False


def expected_size(data: bytes) -> int:
    from renderfarm.images import _scanlines

    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    lines = _scanlines(width, height, (3 if colour == 2 else 4) * depth // 8, bool(interlace))
    return sum(rows * stride for _, stride, rows in lines)


def test_a_huge_claimed_size_is_refused_before_any_inflating():
    data = make_png(4, 4)
    huge = fix_crcs(data[:16] + struct.pack(">II", 20000, 20000) + data[24:])
    with pytest.raises(VerificationError, match="over the limit"):
        scan_png(huge, "png", width=20000, height=20000, what="x")
