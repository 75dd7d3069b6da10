"""Image formats: exact transfer curves, deterministic atomic writes, and strict checking."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from renderfarm import images
from renderfarm.errors import InputError, VerificationError
from renderfarm.images import FORMATS, check_format, check_image, encode_linear, extension

W, H = 40, 30


@pytest.fixture(scope="module")
def linear() -> np.ndarray:
    rng = np.random.default_rng(7)
    values = rng.random((H, W, 3)) * 1.3  # some highlights above 1, which only EXR keeps
    values[0, 0] = [0.0, 0.25, 1.0]
    return values


@pytest.fixture(scope="module")
def encoded(linear, tmp_path_factory) -> dict[str, bytes]:
    directory = tmp_path_factory.mktemp("encoded")
    files = {}
    for fmt in FORMATS:
        path = directory / f"frame.{extension(fmt)}"
        encode_linear(linear, fmt, path)
        files[fmt] = path.read_bytes()
    return files


def png_chunks(data: bytes) -> list[bytes]:
    chunks, position = [], 8
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        chunks.append(data[position + 4 : position + 8])
        position += 12 + length
    return chunks


# --- names -----------------------------------------------------------------------------------


def test_formats_and_extensions():
    assert FORMATS == ("png", "png16", "exr")
    assert [extension(f) for f in FORMATS] == ["png", "png", "exr"]
    assert check_format("png16") == "png16"


@pytest.mark.parametrize("fmt", ["tiff", "PNG", "", "jpg"])
def test_unknown_format_is_one_line(fmt):
    with pytest.raises(InputError) as caught:
        check_format(fmt)
    assert str(caught.value) == f"format: {fmt!r} is not one of png, png16, exr"
    with pytest.raises(InputError):
        extension(fmt)


def test_importing_images_loads_no_image_library():
    import subprocess
    import sys

    code = (
        "import sys, renderfarm.images, renderfarm.tiles, renderfarm.stitching\n"
        "heavy = [m for m in ('numpy', 'PIL', 'OpenImageIO') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- transfer curves -------------------------------------------------------------------------


def test_8bit_curve_is_gamma_two_exact():
    linear = np.array([0.0, 0.25, 1.0, 4.0, -1.0, 0.0625])
    assert images.to_8bit(linear).tolist() == [0, 128, 255, 255, 0, 64]


def test_16bit_curve_is_the_same_gamma_two_exact():
    linear = np.array([0.0, 0.25, 1.0, 4.0, -1.0, 0.0625, 1 / 65535**2])
    assert images.to_16bit(linear).tolist() == [0, 32768, 65535, 65535, 0, 16384, 1]


# --- writing ---------------------------------------------------------------------------------


def test_each_format_decodes_to_its_own_encoding(encoded, linear, tmp_path):
    expected = {
        "png": images.to_8bit(linear),
        "png16": images.to_16bit(linear),
        "exr": np.dstack([linear.astype(np.float32), np.ones((H, W, 1), np.float32)]),
    }
    for fmt, data in encoded.items():
        path = tmp_path / f"{fmt}.{extension(fmt)}"
        path.write_bytes(data)
        pixels = images.read_pixels(path, fmt)
        assert pixels.dtype == expected[fmt].dtype and pixels.shape == expected[fmt].shape
        assert pixels.tobytes() == expected[fmt].tobytes(), fmt
    assert images.read_pixels(tmp_path / "exr.exr", "exr").max() > 1.0  # highlights kept


def test_writes_are_deterministic_and_carry_no_varying_metadata(encoded, linear, tmp_path):
    for fmt, data in encoded.items():
        again = tmp_path / f"again.{extension(fmt)}"
        encode_linear(linear, fmt, again)
        assert again.read_bytes() == data, fmt
    assert png_chunks(encoded["png"]) == [b"IHDR", b"IDAT", b"IEND"]
    chunks = set(png_chunks(encoded["png16"]))
    assert b"IHDR" in chunks and not chunks & {b"tIME", b"tEXt", b"iTXt", b"sRGB", b"gAMA"}
    assert b"DateTime" not in encoded["exr"] and b"capDate" not in encoded["exr"]


def test_a_write_leaves_only_the_finished_file(linear, tmp_path):
    for fmt in FORMATS:
        encode_linear(linear, fmt, tmp_path / f"out.{fmt}.{extension(fmt)}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "out.exr.exr", "out.png.png", "out.png16.png",
    ]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_partial(tmp_path):
    target = tmp_path / "frame.png"
    target.write_bytes(b"old")
    with pytest.raises(OSError):
        images.write_pixels(np.zeros((4, 4, 3), np.uint16), "png16", tmp_path / "missing" / "x.png")
    with pytest.raises((TypeError, KeyError)):
        images.write_pixels(np.zeros((4, 4, 3), np.float64), "exr", target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["frame.png"]


def test_rgba_pngs_and_half_or_rgb_exrs_keep_their_layout(tmp_path):
    rng = np.random.default_rng(1)
    cases = [
        ("png", rng.integers(0, 256, (5, 6, 4), dtype=np.uint8), ("R", "G", "B", "A")),
        ("png16", rng.integers(0, 65536, (5, 6, 4), dtype=np.uint16), ("R", "G", "B", "A")),
        ("exr", rng.random((5, 6, 4)).astype(np.float16), ("R", "G", "B", "A")),
        ("exr", rng.random((5, 6, 3)).astype(np.float32), ("R", "G", "B")),
    ]
    for fmt, pixels, channels in cases:
        path = tmp_path / f"x.{extension(fmt)}"
        images.write_pixels(pixels, fmt, path)
        back, layout = images.read_image(path, fmt, width=6, height=5)
        assert layout == images.Layout(pixels.dtype.name, channels)
        assert back.tobytes() == pixels.tobytes(), (fmt, pixels.dtype)  # straight alpha kept


# --- checking --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_good_image_passes(encoded, fmt):
    check_image(encoded[fmt], fmt=fmt, width=W, height=H, what="frame 1")


def flip_a_byte_near_the_end(data: bytes) -> bytes:
    position = len(data) - 100
    return data[:position] + bytes([data[position] ^ 0x55]) + data[position + 1 :]


NAMES = {"png": "8-bit PNG", "png16": "16-bit PNG", "exr": "EXR"}


def undecodable(fmt: str, png_word: str) -> str:
    return "not a decodable EXR" if fmt == "exr" else f"{png_word} {NAMES[fmt]}"


def not_this_format(fmt: str) -> str:
    if fmt == "exr":
        return "not an OpenEXR file, expected EXR"
    return f"not a PNG file, expected {NAMES[fmt]}"


# damage -> (how, the message's start for a format)
BAD = {
    "truncated": (lambda d: d[: len(d) // 2], lambda f: undecodable(f, "truncated")),
    "last-bytes-cut": (lambda d: d[:-5], lambda f: undecodable(f, "truncated")),
    "corrupt": (flip_a_byte_near_the_end, lambda f: undecodable(f, "not a decodable")),
    "empty": (lambda d: b"", lambda f: f"empty file, expected {NAMES[f]}"),
    "gif": (lambda d: b"GIF89a" + bytes(60), not_this_format),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("damage", sorted(BAD))
def test_a_damaged_image_fails_naming_what(encoded, fmt, damage):
    spoil, message = BAD[damage]
    with pytest.raises(VerificationError) as caught:
        check_image(spoil(encoded[fmt]), fmt=fmt, width=W, height=H, what="frame 7 (shot.0007)")
    assert str(caught.value).startswith(f"frame 7 (shot.0007): {message(fmt)}"), str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_wrong_size_fails(encoded, fmt):
    with pytest.raises(VerificationError) as caught:
        check_image(encoded[fmt], fmt=fmt, width=W + 1, height=H, what="frame 2")
    assert str(caught.value) == f"frame 2: {W}x{H} pixels, expected {W + 1}x{H}"


@pytest.mark.parametrize(
    ("actual", "expected", "message"),
    [
        ("png", "png16", "an 8-bit RGB PNG, expected 16-bit PNG (RGB or RGBA)"),
        ("png16", "png", "a 16-bit RGB PNG, expected 8-bit PNG (RGB or RGBA)"),
        ("exr", "png", "not a PNG file, expected 8-bit PNG"),
        ("exr", "png16", "not a PNG file, expected 16-bit PNG"),
        ("png", "exr", "not an OpenEXR file, expected EXR"),
    ],
)
def test_the_wrong_format_fails(encoded, actual, expected, message):
    with pytest.raises(VerificationError) as caught:
        check_image(encoded[actual], fmt=expected, width=W, height=H, what="frame 3")
    assert str(caught.value) == f"frame 3: {message}"


def png_with_header(width: int, height: int, depth: int, colour: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    chunk = b"IHDR" + header
    ihdr = struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return b"\x89PNG\r\n\x1a\n" + ihdr + b"\x00\x00\x00\x00IEND\xaeB`\x82"


def test_a_huge_png_is_refused_from_its_header():
    huge = png_with_header(20000, 20000, 8, 2)
    with pytest.raises(VerificationError, match=r"^x: 20000x20000 pixels, over the limit"):
        check_image(huge, fmt="png", width=20000, height=20000, what="x")


@pytest.mark.parametrize(
    ("depth", "colour", "kind"),
    [(8, 0, "colour type 0"), (8, 3, "colour type 3"), (16, 4, "colour type 4")],
)
def test_grey_and_palette_pngs_are_refused(depth, colour, kind):
    fmt = "png" if depth == 8 else "png16"
    with pytest.raises(VerificationError) as caught:
        check_image(png_with_header(4, 4, depth, colour), fmt=fmt, width=4, height=4, what="x")
    assert str(caught.value).startswith(f"x: {'an' if depth == 8 else 'a'} {depth}-bit {kind} PNG")


def test_an_exr_of_one_channel_is_refused(tmp_path):
    import OpenImageIO as oiio

    path = tmp_path / "grey.exr"
    output = oiio.ImageOutput.create("openexr")
    output.open(str(path), oiio.ImageSpec(4, 3, 1, "float"))
    output.write_image(np.zeros((3, 4, 1), np.float32))
    output.close()
    with pytest.raises(VerificationError, match=r"^x: an EXR of 1 float channels, expected 3 or 4"):
        check_image(path.read_bytes(), fmt="exr", width=4, height=3, what="x")


def test_a_missing_file_fails_naming_what(tmp_path):
    with pytest.raises(VerificationError, match=r"^tile 2: cannot be read"):
        images.read_pixels(tmp_path / "nope.png", "png16", what="tile 2")


def test_an_exr_named_png_is_still_read_as_what_it_is(encoded, tmp_path):
    path = tmp_path / "liar.png"
    path.write_bytes(encoded["exr"])
    with pytest.raises(VerificationError, match="not a PNG file"):
        images.read_pixels(path, "png16")
    assert images.read_pixels(path, "exr").shape == (H, W, 4)


def test_read_pixels_from_bytes_is_for_8bit_pngs_only(encoded):
    assert images.read_pixels(encoded["png"], "png").shape == (H, W, 3)
    with pytest.raises(ValueError):
        images.read_pixels(encoded["png16"], "png16")


def test_images_written_under_a_path_object_and_a_str_are_the_same(linear, tmp_path: Path):
    encode_linear(linear, "png16", tmp_path / "a.png")
    encode_linear(linear, "png16", str(tmp_path / "b.png"))
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
