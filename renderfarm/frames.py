"""Frame specs (`1-100`, `1-100x2`, `1,5,10-20`): checking, counting, expanding, chunking, naming.

The grammar is deliberately small. A spec is one or more parts separated by
commas (whitespace around a part is ignored); a part is

    N          one frame                      7, -5
    A-B        every frame from A to B        1-100, -10--5, -3-3
    A-BxS      every S-th frame from A to B   1-100x2 (S >= 1)

with A <= B and every number within ±1,000,000,000. Nothing else is a spec:
fileseq's other forms (`y`, `:`, `#`, `@`, descending ranges) are refused,
because a spec we cannot explain to a user is one we should not render.

Specs are checked and counted from their parts before anything is expanded,
so `1-100000000000` costs nothing to refuse. Only then does fileseq expand the
checked parts of a spec of several (one part is a plain range, expanded here: the manager
expands a task's frames for each order it sends) (it would accept descending ranges and expand up to its own
10M-frame limit before anyone could count).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from renderfarm.errors import FrameSpecError, InputError

DEFAULT_MAX_TASKS = 100_000
"""The per-job cap on tasks (and so on frames when chunk is 1)."""

MAX_FRAMES = 10_000_000
"""The most frames one spec may expand to (fileseq's own expansion limit too)."""

FRAME_LIMIT = 1_000_000_000
"""No frame number or step may be beyond ±this; Blender itself stops at ±1,048,574."""

_EXAMPLES = "expected e.g. 1-100, 1-100x2, 1,5,10-20"
_PART = re.compile(r"(?P<first>-?[0-9]+)(?:-(?P<last>-?[0-9]+)(?:x(?P<step>[0-9]+))?)?")
_SHOWN_CHARS = 60  # a pasted megabyte of digits should not become a megabyte of error line


class _Part(NamedTuple):
    """One checked part of a spec: the frames first, first+step, ..., up to last."""

    first: int
    last: int
    step: int

    def count(self) -> int:
        return (self.last - self.first) // self.step + 1


def parse_frames(spec: str, *, max_frames: int = MAX_FRAMES) -> list[int]:
    """Check `spec` and expand it: frames in spec order, duplicates removed keeping the first.

    `max_frames` is checked against the sum of the parts' counts before
    anything is expanded, so a frame named by two parts counts twice there.
    """
    parts = _parse(spec)
    total = sum(part.count() for part in parts)
    if total > max_frames:
        raise FrameSpecError(
            f"frames: {_shown(spec)} has {total:,} frames, over the limit of {max_frames:,}"
        )
    if len(parts) == 1:  # a task's chunk, most often: one part is a range, with nothing to dedupe
        first, last, step = parts[0]
        return list(range(first, last + 1, step))
    import fileseq  # imported here: the CLI checks and counts specs without it

    # Only parts our own checks accepted reach fileseq, in a canonical form it reads the same way.
    canonical = ",".join(f"{p.first}-{p.last}x{p.step}" for p in parts)
    return [int(f) for f in fileseq.FrameSet(canonical)]


def count_frames(spec: str) -> int:
    """Check `spec` and count its frames arithmetically, without expanding.

    Each part is counted on its own, so a frame named by two parts counts twice:
    the result equals `len(parse_frames(spec))` when no parts overlap, and is
    an upper bound otherwise. No cap is applied here; `parse_frames` applies it.
    """
    return sum(part.count() for part in _parse(spec))


def lowest_frame(spec: str) -> int:
    """Check `spec` and return its lowest frame, without expanding it."""
    return min(part.first for part in _parse(spec))


def chunk_frames(frames: list[int], size: int) -> list[list[int]]:
    """Split frames, in order, into chunks of at most `size` frames.

    Like Flamenco's frame chunker, a chunk simply takes the next `size`
    frames in order, even across gaps: with size 4, `1-10,20-25,40` becomes
    1-4, 5-8, 9,10,20,21, 22-25, 40. Only the last chunk may be smaller.
    """
    if size < 1:
        raise InputError(f"chunk: {size!r} must be at least 1")
    return [frames[start : start + size] for start in range(0, len(frames), size)]


def format_frames(frames: list[int]) -> str:
    """The shortest readable spec for a list of frames, keeping their order.

    [1,2,3,4] -> '1-4', [1,3,5,7] -> '1-7x2', [1,2,3,7] -> '1-3,7', [] -> ''.
    The result is the shortest spec that names exactly these frames in this
    order (ranges cover 3+ frames; a pair is written `9,10`). Among specs of
    equal length it prefers fewer stepped ranges, so [1,3,5] is '1,3,5' and not
    '1-5x2', then more plain ranges, so runs stay whole: '11-13,15-21x2' and not
    '11,12,13-21x2'. `parse_frames` of the result gives the list back whenever
    it has no duplicates.
    """
    # Dynamic programming from the end: best[i] is the cost of writing
    # frames[i:], as (characters, stepped ranges, -plain ranges). A range at
    # i only needs to end at the end of the longest arithmetic run from i, or
    # one frame before it (so that frame can start the next range): ending any
    # earlier is never shorter than extending the range.
    n = len(frames)
    best = [(0, 0, 0)] * (n + 1)
    pieces: list[tuple[str, int]] = [("", 0)] * n  # (text, index after it) chosen at i
    run_end = n - 1  # last index of the arithmetic run starting at i
    for i in range(n - 1, -1, -1):
        step = frames[i + 1] - frames[i] if i + 1 < n else 0
        if not (i + 2 < n and frames[i + 2] - frames[i + 1] == step):
            run_end = min(i + 1, n - 1)  # else the run from i+1 simply extends back to i
        options = []
        if step > 0:
            for end in (run_end, run_end - 1):
                if end - i >= 2:
                    text = f"{frames[i]}-{frames[end]}" + (f"x{step}" if step > 1 else "")
                    chars, stepped, minus_plain = best[end + 1]
                    plain = step == 1
                    cost = (chars + len(text) + 1, stepped + (not plain), minus_plain - plain)
                    options.append((cost, text, end + 1))
        text = str(frames[i])
        chars, stepped, minus_plain = best[i + 1]
        options.append(((chars + len(text) + 1, stepped, minus_plain), text, i + 1))
        best[i], text, after = min(options, key=lambda option: option[0])
        pieces[i] = (text, after)

    texts = []
    i = 0
    while i < n:
        text, i = pieces[i]
        texts.append(text)
    return ",".join(texts)


def frame_name(name: str, frame: int, ext: str) -> str:
    """File name of one frame: `name.FRAME.ext`, the frame written with at least 4 digits.

    ('shot', 7, 'png') -> 'shot.0007.png'; ('shot', 123456, 'png') -> 'shot.123456.png';
    ('shot', -7, 'png') -> 'shot.-0007.png'. A negative frame is a minus sign
    then at least 4 digits, which is what Blender writes for `####` (C's
    `%.4d`), so our names match the files Blender renders. (fileseq 3.4 pads
    to a width of 4 including the sign, `-007`, which Blender never writes.)
    `ext` is given without its dot.
    """
    sign = "-" if frame < 0 else ""
    return f"{name}.{sign}{abs(frame):04d}.{ext}"


def _parse(spec: str) -> list[_Part]:
    """Check every part of `spec` (grammar, magnitude, direction) and return them."""
    if not isinstance(spec, str):
        raise FrameSpecError(f"frames: {spec!r} is not a frame spec ({_EXAMPLES})")
    parts = []
    for text in spec.split(","):
        match = _PART.fullmatch(text.strip())
        if match is None:
            raise FrameSpecError(f"frames: {_shown(spec)} is not a frame spec ({_EXAMPLES})")
        first = _number(match["first"], spec)
        last = first if match["last"] is None else _number(match["last"], spec)
        step = 1 if match["step"] is None else _number(match["step"], spec)
        if step == 0:
            raise FrameSpecError(f"frames: {_shown(spec)} is not a frame spec ({_EXAMPLES})")
        if last < first:
            fix = _ascending(first, last, step)
            raise FrameSpecError(f"frames: {_shown(text.strip())} runs backwards (write {fix!r})")
        parts.append(_Part(first, last, step))
    return parts


def _number(digits: str, spec: str) -> int:
    """One number of a spec, refused beyond ±FRAME_LIMIT before int() sees a huge string."""
    significant = digits.lstrip("-").lstrip("0")
    if len(significant) > len(str(FRAME_LIMIT)) or int(significant or "0") > FRAME_LIMIT:
        raise FrameSpecError(
            f"frames: {_shown(spec)} has number {_shorten(digits)}, "
            f"beyond the limit of ±{FRAME_LIMIT}"
        )
    return int(digits)


def _ascending(first: int, last: int, step: int) -> str:
    """The spec for the same frames as the backwards part first-last(xstep), written upwards."""
    lowest = first - (first - last) // step * step
    if lowest == first:
        return str(first)
    return f"{lowest}-{first}" + (f"x{step}" if step > 1 else "")


def _shorten(text: str) -> str:
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _shown(text: str) -> str:
    """`text` quoted for an error line, shortened when it is very long."""
    return repr(_shorten(text))
