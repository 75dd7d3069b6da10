"""Benchmark: stitching a tiled 16-bit frame against the least work that could make it.

    uv run python -m benchmarks stitch [--small] [--exr] [--repeats 3] [--keep DIR]

Writes 8x8 tiles of a 7680x4320 16-bit PNG frame (`--small`: 1920x1080) to a temporary
directory first, untimed: a smooth gradient with mild noise, as a render with some sampling
noise looks. Then, in this one run, alternating, best of `--repeats`, each in a fresh
subprocess:

    stitch        `renderfarm.stitching.assemble_frame`: checks every tile, pastes each into
                  the frame, writes one 16-bit PNG
    lower bound   OpenImageIO alone: reads each tile into one preallocated array and writes it
                  once with the same settings, checking nothing

and prints both times, their ratio (target at most 1.3x) and the stitch process's peak
resident memory (target under 1 GiB; Linux's VmHWM, reset as the subprocess starts so that
it is this process's own). `--exr` does the same for float RGBA EXR tiles.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.figures import Figure, show

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"full": (7680, 4320), "small": (1920, 1080)}
GRID = "8x8"
TARGET_RATIO = 1.3
TARGET_PEAK = 1 << 30


def make_tiles(directory: Path, width: int, height: int, fmt: str) -> None:
    """The frame's tiles, each encoded on its own as a renderer writes a region."""
    import numpy as np

    from renderfarm.images import encode_linear, extension
    from renderfarm.tiles import parse_grid

    for tile in parse_grid(GRID).split(width, height):
        ys, xs = np.mgrid[tile.y : tile.y + tile.height, tile.x : tile.x + tile.width]
        u, v = xs / width, ys / height
        linear = np.stack([u, v, 0.5 * (u + v)], axis=2) ** 2
        noise = np.random.default_rng(tile.index).standard_normal(linear.shape)
        linear *= 1.0 + 0.02 * noise
        encode_linear(linear, fmt, directory / f"tile.{tile.index}.{extension(fmt)}")


# --- the two contestants, each run in a child process --------------------------------------


def stitch(directory: Path, width: int, height: int, fmt: str, out: Path) -> None:
    from renderfarm.images import extension
    from renderfarm.stitching import assemble_frame
    from renderfarm.tiles import parse_grid

    grid = parse_grid(GRID)
    tiles = ((t, directory / f"tile.{t.index}.{extension(fmt)}") for t in grid.split(width, height))
    assemble_frame(tiles, width=width, height=height, fmt=fmt, out_path=out, grid=grid)


def lower_bound(directory: Path, width: int, height: int, fmt: str, out: Path) -> None:
    import numpy as np
    import OpenImageIO as oiio

    from renderfarm import images
    from renderfarm.tiles import parse_grid

    channels, kind, dtype = (3, "uint16", np.uint16) if fmt == "png16" else (4, "float", np.float32)
    frame = np.empty((height, width, channels), dtype=dtype)
    for tile in parse_grid(GRID).split(width, height):
        image = oiio.ImageInput.open(str(directory / f"tile.{tile.index}.{images.extension(fmt)}"))
        frame[tile.y : tile.y + tile.height, tile.x : tile.x + tile.width] = image.read_image(kind)
        image.close()
    spec = oiio.ImageSpec(width, height, channels, kind)
    if fmt == "png16":  # the same settings as the farm's, so the same work and the same bytes
        spec.attribute("png:compressionLevel", images.PNG16_COMPRESSION)
        spec.attribute("oiio:ColorSpace", "g20_rec709")
        spec.attribute("oiio:UnassociatedAlpha", 1)
    else:
        spec.attribute("compression", images.EXR_COMPRESSION)
        spec.attribute("DateTime", "")
    output = oiio.ImageOutput.create("png" if fmt == "png16" else "openexr")
    output.open(str(out), spec)
    output.write_image(frame)
    output.close()


CONTESTANTS = {"stitch": stitch, "lower-bound": lower_bound}


def child(name: str, directory: Path, width: int, height: int, fmt: str, out: Path) -> None:
    """Run one contestant and print its time (imports excluded) and peak memory as JSON."""
    _reset_peak_memory()
    import numpy  # noqa: F401  imported before the clock starts, by both contestants alike
    import OpenImageIO  # noqa: F401
    import PIL.Image  # noqa: F401

    import renderfarm.stitching  # noqa: F401

    start = time.perf_counter()
    CONTESTANTS[name](directory, width, height, fmt, out)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_bytes": _peak_memory()}))


def _reset_peak_memory() -> None:
    # A child started by vfork inherits its parent's peak in ru_maxrss; this resets it (Linux).
    try:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")
    except OSError:
        pass


def _peak_memory() -> int:
    try:
        with open("/proc/self/status") as file:
            for line in file:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --- the parent ------------------------------------------------------------------------------


def run_child(name: str, directory: Path, width: int, height: int, fmt: str, out: Path) -> dict:
    argv = [sys.executable, "-m", "benchmarks.stitch", "--child", name, str(directory), str(width), str(height)]
    argv += [fmt, str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout.splitlines()[-1])


def compare(directory: Path, width: int, height: int, fmt: str, repeats: int) -> list[Figure]:
    from renderfarm.images import extension

    started = time.perf_counter()
    make_tiles(directory, width, height, fmt)
    tile_bytes = sum(p.stat().st_size for p in directory.glob(f"tile.*.{extension(fmt)}"))
    print(
        f"\n{fmt}: {width}x{height} from {GRID} tiles ({tile_bytes / 2**20:.0f} MiB of files), "
        f"made in {time.perf_counter() - started:.1f} s"
    )
    best: dict[str, dict] = {}
    outputs = {name: directory / f"{name}.{extension(fmt)}" for name in CONTESTANTS}
    for _ in range(repeats):
        for name in CONTESTANTS:  # alternating, so both see the same machine
            result = run_child(name, directory, width, height, fmt, outputs[name])
            if name not in best or result["seconds"] < best[name]["seconds"]:
                best[name] = result
    same = _digest(outputs["stitch"]) == _digest(outputs["lower-bound"])
    stitched, bound = best["stitch"], best["lower-bound"]
    print(f"frame written: {outputs['stitch'].stat().st_size / 2**20:.0f} MiB; "
          f"byte-identical to the lower bound's: {'yes' if same else 'NO'}")
    print(f"stitch (assemble_frame): {stitched['seconds']:.2f} s, "
          f"peak memory {stitched['peak_bytes'] / 2**20:.0f} MiB "
          f"(target under {TARGET_PEAK / 2**20:.0f} MiB)")
    print(f"lower bound (OpenImageIO, read all, write once): {bound['seconds']:.2f} s, "
          f"peak memory {bound['peak_bytes'] / 2**20:.0f} MiB")
    print(f"stitch / lower bound ratio: {stitched['seconds'] / bound['seconds']:.2f}x "
          f"(best of {repeats}; target at most {TARGET_RATIO}x)")
    if not same:
        raise RuntimeError(f"the stitched {fmt} frame differs from the lower bound's")
    about = f"{fmt} {width}x{height} from {GRID} tiles"
    return [
        Figure("stitch", f"stitch {about}, best of {repeats}", stitched["seconds"], "s",
               "OpenImageIO lower bound", bound["seconds"], target=f"at most {TARGET_RATIO}x"),
        Figure("stitch", f"stitch peak memory, {about}", stitched["peak_bytes"] / 2**20, "MiB",
               "lower bound's peak", bound["peak_bytes"] / 2**20, target=f"under {TARGET_PEAK / 2**20:.0f} MiB"),
    ]


def _digest(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        name, directory, width, height, fmt, out = sys.argv[2:8]
        child(name, Path(directory), int(width), int(height), fmt, Path(out))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="1920x1080 instead of 7680x4320")
    parser.add_argument("--exr", action="store_true", help="also stitch float RGBA EXR tiles")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="make the tiles here and keep them")
    args = parser.parse_args()
    show(measure(args.small, args.exr, args.repeats, args.keep))


def measure(small: bool = False, exr: bool = True, repeats: int = 3, keep: Path | None = None) -> list[Figure]:
    width, height = SIZES["small" if small else "full"]
    root = keep or Path(tempfile.mkdtemp(prefix="rf-stitch-"))
    print(f"stitch benchmark: {os.cpu_count()} CPUs, OpenImageIO {_oiio_version()}, tiles in {root}")
    figures: list[Figure] = []
    try:
        for fmt in ("png16", "exr") if exr else ("png16",):
            directory = root / fmt
            directory.mkdir(parents=True, exist_ok=True)
            figures += compare(directory, width, height, fmt, repeats)
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return figures


def _oiio_version() -> str:
    import OpenImageIO as oiio

    return oiio.VERSION_STRING


if __name__ == "__main__":
    main()
