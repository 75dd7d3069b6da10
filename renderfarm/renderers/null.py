"""The null renderer: writes a small, valid, flat image of the job's size at once, so that the
farm itself can be measured apart from rendering.

    python -m renderfarm.renderers.null --size=WxH --frames=1,2,3 --output=out.{frame}.png

Speaks the builtin renderer's stdout protocol: ``frame <frame> <path>`` per written frame.
"""

from __future__ import annotations

import argparse
import os
import sys


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.partition("x")
    width, height = int(w), int(h)
    if not (0 < width <= 65536 and 0 < height <= 65536):
        raise ValueError(text)
    return width, height


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--session"]:
        from renderfarm.renderers.protocol import serve_session

        return serve_session(lambda r: _main_once(
            [f"--size={r['size'][0]}x{r['size'][1]}", f"--frames={','.join(map(str, r['frames']))}",
             f"--output={r['output']}", f"--format={r.get('format') or 'png'}"]))
    return _main_once(argv)


def _main_once(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="renderfarm.renderers.null", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=_size, required=True)
    parser.add_argument("--frames", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--scene", default=None, help="ignored: the null renderer draws nothing of it")
    parser.add_argument("--format", default="png", choices=("png", "png16", "exr"))
    args = parser.parse_args(argv)
    width, height = args.size
    for text in args.frames.split(","):
        frame = int(text)
        path = args.output.replace("{frame}", str(frame))
        _write_flat(path, width, height, args.format, frame % 256 / 255)
        print(f"frame {frame} {path}", flush=True)
    return 0


def _write_flat(path: str, width: int, height: int, fmt: str, shade: float) -> None:
    tmp = f"{path}.tmp"
    if fmt == "png":  # Pillow alone: the fastest way to a valid 8-bit PNG
        from PIL import Image

        colour = (int(shade * 255), 255 - int(shade * 255), 128)
        Image.new("RGB", (width, height), colour).save(tmp, format="PNG", compress_level=1)
        os.replace(tmp, path)
        return
    import numpy as np

    from renderfarm.images import encode_linear

    image = np.empty((height, width, 3), dtype=np.float64)
    image[...] = (shade, 1.0 - shade, 0.5)
    encode_linear(image, fmt, path)


if __name__ == "__main__":
    sys.exit(main())
