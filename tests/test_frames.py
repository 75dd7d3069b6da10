"""Frame specs: exact expansions, counts, chunks, formatted specs, file names and error lines."""

from __future__ import annotations

import functools
import random
import time

import fileseq
import pytest

from renderfarm.errors import FrameSpecError, InputError
from renderfarm.frames import (
    DEFAULT_MAX_TASKS,
    chunk_frames,
    count_frames,
    format_frames,
    frame_name,
    parse_frames,
)

NOT_A_SPEC = "is not a frame spec (expected e.g. 1-100, 1-100x2, 1,5,10-20)"


@pytest.mark.parametrize(
    ("spec", "frames"),
    [
        ("7", [7]),
        ("0", [0]),
        ("1-5", [1, 2, 3, 4, 5]),
        ("3-3", [3]),
        ("1-10x2", [1, 3, 5, 7, 9]),
        ("1-10x3", [1, 4, 7, 10]),
        ("1-10x20", [1]),
        ("1,5,10-12", [1, 5, 10, 11, 12]),
        ("-5", [-5]),
        ("-10--5", [-10, -9, -8, -7, -6, -5]),
        ("-3-3", [-3, -2, -1, 0, 1, 2, 3]),
        ("-6--1x2", [-6, -4, -2]),
        ("-0", [0]),
        ("007", [7]),
        ("10,1,5", [10, 1, 5]),  # spec order, not sorted
        ("1-4,3-6", [1, 2, 3, 4, 5, 6]),  # duplicates removed, first kept
        ("5,1-6x2,5", [5, 1, 3]),
        (" 1 , 5 ,\t10-11 ", [1, 5, 10, 11]),
        ("-1000000000", [-1_000_000_000]),
        ("999999999-1000000000", [999_999_999, 1_000_000_000]),
    ],
)
def test_parse_frames_expands_each_syntax(spec: str, frames: list[int]) -> None:
    assert parse_frames(spec) == frames


def test_parse_frames_matches_fileseq_for_every_spec_it_accepts() -> None:
    rng = random.Random(7)
    for _ in range(300):
        parts = []
        for _ in range(rng.randint(1, 4)):
            first = rng.randint(-30, 30)
            kind = rng.choice(["single", "range", "step"])
            if kind == "single":
                parts.append(str(first))
            elif kind == "range":
                parts.append(f"{first}-{first + rng.randint(0, 20)}")
            else:
                parts.append(f"{first}-{first + rng.randint(0, 20)}x{rng.randint(1, 6)}")
        spec = ",".join(parts)
        assert parse_frames(spec) == list(fileseq.FrameSet(spec)), spec


@pytest.mark.parametrize(
    ("spec", "count"),
    [
        ("7", 1),
        ("1-100", 100),
        ("1-100x2", 50),
        ("1-10x3", 4),
        ("1,5,10-20", 13),
        ("-10--5", 6),
        ("-3-3", 7),
        ("1-1000000000", 1_000_000_000),  # counted, never expanded
    ],
)
def test_count_frames(spec: str, count: int) -> None:
    assert count_frames(spec) == count
    if count < 1000:
        assert count_frames(spec) == len(parse_frames(spec))


def test_count_frames_counts_overlapping_parts_twice() -> None:
    assert count_frames("1-4,3-6") == 8
    assert len(parse_frames("1-4,3-6")) == 6


def test_parse_frames_cap_is_checked_on_the_count() -> None:
    assert len(parse_frames("1-10", max_frames=10)) == 10
    with pytest.raises(FrameSpecError) as caught:
        parse_frames("1-10,1-10", max_frames=15)  # 10 distinct frames, but 20 counted
    assert str(caught.value) == "frames: '1-10,1-10' has 20 frames, over the limit of 15"


def test_default_cap_is_ten_million_frames() -> None:
    assert DEFAULT_MAX_TASKS == 100_000
    with pytest.raises(FrameSpecError) as caught:
        parse_frames("1-100000000")
    assert str(caught.value) == (
        "frames: '1-100000000' has 100,000,000 frames, over the limit of 10,000,000"
    )


@pytest.mark.parametrize(
    "spec",
    [
        "abc",
        "",
        "   ",
        ",",
        "1,",
        ",1",
        "1,,2",
        "1-",
        "1--",
        "-",
        "--1",
        "1-10x0",
        "1-10x-2",
        "1-10x",
        "5x2",
        "1.5",
        "1-10y3",
        "1-10:2",
        "1:10",
        "#",
        "@",
        "1-10#",
        "1 - 10",
        "+5",
        "1..10",
        "1-5-9",
        "x",
        "１-５",
        "٣",
    ],
)
def test_malformed_specs_are_refused_with_one_line(spec: str) -> None:
    with pytest.raises(FrameSpecError) as caught:
        parse_frames(spec)
    assert str(caught.value) == f"frames: {spec!r} {NOT_A_SPEC}"
    with pytest.raises(FrameSpecError):
        count_frames(spec)


def test_a_non_string_is_not_a_spec() -> None:
    with pytest.raises(FrameSpecError) as caught:
        parse_frames(None)  # type: ignore[arg-type]
    assert str(caught.value) == f"frames: None {NOT_A_SPEC}"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("10-1", "frames: '10-1' runs backwards (write '1-10')"),
        ("-5--10", "frames: '-5--10' runs backwards (write '-10--5')"),
        ("10-1x2", "frames: '10-1x2' runs backwards (write '2-10x2')"),
        ("5-3x10", "frames: '5-3x10' runs backwards (write '5')"),
        ("1-5, 20-10 ,30", "frames: '20-10' runs backwards (write '10-20')"),
    ],
)
def test_backwards_ranges_are_refused_with_the_fix(spec: str, message: str) -> None:
    with pytest.raises(FrameSpecError) as caught:
        parse_frames(spec)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("spec", "number"),
    [
        ("1000000001", "1000000001"),
        ("-1000000001", "-1000000001"),
        ("1-100000000000", "100000000000"),
        ("1-10x2000000000", "2000000000"),
    ],
)
def test_absurd_numbers_are_refused(spec: str, number: str) -> None:
    with pytest.raises(FrameSpecError) as caught:
        count_frames(spec)
    assert str(caught.value) == (
        f"frames: {spec!r} has number {number}, beyond the limit of ±1000000000"
    )


def test_a_huge_spec_is_shortened_in_the_error_line() -> None:
    spec = "9" * 100_000  # longer than int() would even convert
    with pytest.raises(FrameSpecError) as caught:
        parse_frames(spec)
    shown = "9" * 57 + "..."
    assert str(caught.value) == (
        f"frames: '{shown}' has number {shown}, beyond the limit of ±1000000000"
    )


@pytest.mark.parametrize(
    ("check", "spec"),
    [
        (count_frames, "1-100000000000"),
        (parse_frames, "1-100000000000"),
        (parse_frames, "1-1000000000,-1000000000--1"),  # legal numbers, over the cap
    ],
)
def test_huge_specs_are_refused_before_anything_is_expanded(check, spec: str) -> None:
    started = time.perf_counter()
    with pytest.raises(FrameSpecError):
        check(spec)
    assert time.perf_counter() - started < 0.01


def test_two_billion_frames_are_counted_without_expanding() -> None:
    started = time.perf_counter()
    assert count_frames("-1000000000-1000000000") == 2_000_000_001
    assert time.perf_counter() - started < 0.01


def test_chunk_frames_takes_frames_in_order_across_gaps() -> None:
    assert chunk_frames(parse_frames("1-10,20-25,40"), 4) == [
        [1, 2, 3, 4],
        [5, 6, 7, 8],
        [9, 10, 20, 21],
        [22, 23, 24, 25],
        [40],
    ]


def test_chunk_frames_sizes() -> None:
    assert chunk_frames([3, 1, 2], 1) == [[3], [1], [2]]
    assert chunk_frames([1, 2, 3], 10) == [[1, 2, 3]]
    assert chunk_frames([1, 2, 3], 3) == [[1, 2, 3]]
    assert chunk_frames(list(range(1, 8)), 3) == [[1, 2, 3], [4, 5, 6], [7]]
    assert chunk_frames([], 4) == []


@pytest.mark.parametrize("size", [0, -3])
def test_chunk_size_must_be_positive(size: int) -> None:
    with pytest.raises(InputError) as caught:
        chunk_frames([1, 2], size)
    assert str(caught.value) == f"chunk: {size} must be at least 1"
    assert not isinstance(caught.value, FrameSpecError)


@pytest.mark.parametrize(
    ("frames", "spec"),
    [
        ([1, 2, 3, 4], "1-4"),
        ([1, 3, 5, 7], "1-7x2"),
        ([1, 2, 3, 7], "1-3,7"),
        ([], ""),
        ([7], "7"),
        ([9, 10], "9,10"),
        ([1, 3, 5], "1,3,5"),  # as short as 1-5x2, and plainer
        ([1, 3, 5, 6, 7, 8], "1,3,5-8"),  # fileseq says 1-5x2,6-8
        ([0, 10, 20, 21, 22], "0,10,20-22"),  # fileseq says 0-20x10,21-22
        ([1, 2, 3, 4, 6, 8], "1-4,6,8"),
        ([11, 12, 13, 15, 17, 19, 21], "11-13,15-21x2"),  # not 11,12,13-21x2
        ([1, 3, 5, 7, 9, 10, 11, 12], "1-7x2,9-12"),  # not 1-9x2,10-12
        ([9, 10, 20, 21], "9,10,20,21"),
        ([-3, -2, -1, 0, 1], "-3-1"),
        ([-10, -9, -8], "-10--8"),
        ([-50, -49], "-50,-49"),
        ([3, 1, 2], "3,1,2"),  # order kept
        (list(range(1, 100_001, 3)), "1-100000x3"),
    ],
)
def test_format_frames(frames: list[int], spec: str) -> None:
    assert format_frames(frames) == spec


def test_format_frames_round_trips() -> None:
    rng = random.Random(11)
    for _ in range(300):
        frames = rng.sample(range(-40, 60), rng.randint(1, 30))
        assert parse_frames(format_frames(frames)) == frames
        frames.sort()
        assert parse_frames(format_frames(frames)) == frames


def test_format_frames_is_as_short_as_any_spec() -> None:
    rng = random.Random(3)
    for _ in range(1000):
        frames = rng.sample(range(-5, 20), rng.randint(1, 14))
        if rng.random() < 0.8:
            frames.sort()
        assert len(format_frames(frames)) == _shortest_length(tuple(frames)), frames


def _shortest_length(frames: tuple[int, ...]) -> int:
    """Brute force: the shortest comma-joined spec naming `frames` in order."""

    @functools.cache
    def from_index(i: int) -> int:
        if i == len(frames):
            return -1  # no comma after the last part
        lengths = [len(str(frames[i])) + 1 + from_index(i + 1)]
        for end in range(i + 2, len(frames)):
            steps = {frames[k + 1] - frames[k] for k in range(i, end)}
            if len(steps) != 1 or (step := steps.pop()) < 1:
                break
            text = f"{frames[i]}-{frames[end]}" + (f"x{step}" if step > 1 else "")
            lengths.append(len(text) + 1 + from_index(end + 1))
        return min(lengths)

    return from_index(0)


@pytest.mark.parametrize(
    ("frame", "name"),
    [
        (7, "shot.0007.png"),
        (0, "shot.0000.png"),
        (1001, "shot.1001.png"),
        (123456, "shot.123456.png"),
        (-7, "shot.-0007.png"),  # Blender's %.4d, not fileseq's -007
        (-123456, "shot.-123456.png"),
    ],
)
def test_frame_name_pads_to_four_digits(frame: int, name: str) -> None:
    assert frame_name("shot", frame, "png") == name
