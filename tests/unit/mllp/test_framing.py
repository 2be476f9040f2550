"""The sans-IO MLLP framer: frames out of any chunking, junk, limits, truncation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.errors import FramingError
from connector.mllp._framing import DEFAULT_MAX_FRAME_BYTES, MLLPFramer, frame
from tests.conftest import CISIS_FIXTURES

VT, FS, CR = b"\x0b", b"\x1c", b"\r"


def feed_in_chunks(framer: MLLPFramer, data: bytes, cuts: list[int]) -> list[bytes]:
    out: list[bytes] = []
    previous = 0
    for cut in [*sorted(cuts), len(data)]:
        out.extend(framer.feed(data[previous:cut]))
        previous = cut
    return out


# Bytes that matter to the framer are made frequent; VT/FS are removed from payloads.
_interesting = st.one_of(st.binary(max_size=64), st.sampled_from([CR, b"\n", b"MSH|", b"\x00"]))
payloads = st.lists(_interesting, max_size=8).map(
    lambda parts: b"".join(parts).replace(VT, b"").replace(FS, b""))
# Junk between frames: anything but a start block (it may hold FS CR, CR, LF ...).
junk = st.lists(st.one_of(st.binary(max_size=16), st.sampled_from([FS + CR, FS, CR, b"\n"])),
                max_size=4).map(lambda parts: b"".join(parts).replace(VT, b""))


@st.composite
def streams(draw: st.DrawFn, payload_strategy: st.SearchStrategy[bytes] = payloads
            ) -> tuple[list[bytes], list[bytes], bytes, list[int]]:
    messages = draw(st.lists(payload_strategy, max_size=12))
    junks = draw(st.lists(junk, min_size=len(messages) + 1, max_size=len(messages) + 1))
    data = junks[0] + b"".join(frame(m) + j for m, j in zip(messages, junks[1:], strict=True))
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=30))
    return messages, junks, data, cuts


@given(streams())
def test_any_chunking_with_junk_yields_exactly_the_payloads(
    stream: tuple[list[bytes], list[bytes], bytes, list[int]],
) -> None:
    messages, junks, data, cuts = stream
    framer = MLLPFramer()
    assert feed_in_chunks(framer, data, cuts) == messages
    assert framer.pending_bytes == 0
    assert framer.stats.frames == len(messages)
    assert framer.stats.discarded_bytes == sum(len(j) for j in junks)


# Payloads that hold lone FS bytes (never FS CR: that is the frame end).
payloads_with_fs = st.lists(st.one_of(_interesting, st.just(FS)), max_size=12).map(
    lambda parts: b"".join(parts).replace(VT, b"").replace(FS + CR, FS + b"\n"))


@given(streams(payloads_with_fs))
def test_fs_not_followed_by_cr_is_data(
    stream: tuple[list[bytes], list[bytes], bytes, list[int]],
) -> None:
    messages, _, data, cuts = stream
    framer = MLLPFramer()
    assert feed_in_chunks(framer, data, cuts) == messages


def test_fs_not_followed_by_cr_examples() -> None:
    framer = MLLPFramer()
    assert framer.feed(VT + b"A" + FS + b"B" + FS + FS + CR) == [b"A\x1cB\x1c"]
    assert framer.feed(VT + b"A" + FS) == []
    assert framer.pending_bytes == 2
    assert framer.feed(b"x" + FS) == []
    assert framer.feed(CR) == [b"A\x1cx"]
    assert framer.pending_bytes == 0


def test_end_block_split_across_feeds_one_byte_at_a_time() -> None:
    data = frame(b"MSH|^~\\&|A") * 3
    framer = MLLPFramer()
    out = [f for i in range(len(data)) for f in framer.feed(data[i:i + 1])]
    assert out == [b"MSH|^~\\&|A"] * 3


def test_lost_frame_end_restarts_at_the_next_start_block() -> None:
    framer = MLLPFramer()
    assert framer.feed(VT + b"AAA" + VT + b"BBB" + FS + CR) == [b"BBB"]
    assert framer.stats.discarded_bytes == 4


def test_frame_wraps_a_payload() -> None:
    assert frame(b"MSH|x") == b"\x0bMSH|x\x1c\r"
    assert frame(b"") == b"\x0b\x1c\r"


# -- limits ---------------------------------------------------------------------------------------


def test_frame_at_the_limit_passes() -> None:
    framer = MLLPFramer(max_frame_bytes=100)
    assert framer.feed(frame(b"x" * 100)) == [b"x" * 100]
    assert framer.feed(b"junk" * 100 + frame(b"y" * 100)) == [b"y" * 100]


def test_frame_over_the_limit_in_one_feed() -> None:
    framer = MLLPFramer(max_frame_bytes=100)
    with pytest.raises(FramingError, match="exceeds 100 bytes"):
        framer.feed(frame(b"x" * 101))
    assert framer.pending_bytes == 0


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_frame_over_the_limit_in_small_chunks(chunk: int) -> None:
    framer = MLLPFramer(max_frame_bytes=100)
    data = frame(b"x" * 101)
    with pytest.raises(FramingError):  # noqa: PT012 - the feed that crosses the limit raises
        for i in range(0, len(data), chunk):
            framer.feed(data[i:i + chunk])
    assert framer.pending_bytes == 0


def test_endless_frame_raises_before_buffering_much_more_than_the_limit() -> None:
    framer = MLLPFramer(max_frame_bytes=1000)
    framer.feed(VT)
    fed = 0
    with pytest.raises(FramingError):  # noqa: PT012 - the feed that crosses the limit raises
        while fed < 100_000:
            framer.feed(b"y" * 10)
            fed += 10
    assert fed <= 1010
    assert framer.pending_bytes == 0


def test_limit_too_small_is_refused() -> None:
    with pytest.raises(ValueError, match="too small"):
        MLLPFramer(max_frame_bytes=15)
    assert MLLPFramer(max_frame_bytes=16).feed(frame(b"z" * 16)) == [b"z" * 16]


def test_largest_fixture_fits_the_default_limit() -> None:
    payload = (CISIS_FIXTURES / "oru-r01-delete" / "message.er7").read_bytes()
    assert len(payload) < DEFAULT_MAX_FRAME_BYTES
    framer = MLLPFramer()
    data = frame(payload) + frame(payload)
    out = [f for i in range(0, len(data), 4096) for f in framer.feed(data[i:i + 4096])]
    assert out == [payload, payload]


# -- empty frames, truncation ---------------------------------------------------------------------


def test_thousands_of_empty_frames() -> None:
    framer = MLLPFramer()
    assert framer.feed(frame(b"") * 5000) == [b""] * 5000
    assert framer.stats.frames == 5000
    data = frame(b"") * 2000
    out = [f for i in range(len(data)) for f in framer.feed(data[i:i + 1])]
    assert out == [b""] * 2000
    assert framer.pending_bytes == 0


def test_truncated_frame_is_pending() -> None:
    framer = MLLPFramer()
    assert framer.feed(b"noise" + VT + b"MSH|abc") == []
    assert framer.pending_bytes == 7
    assert framer.stats.discarded_bytes == 5
    assert framer.feed(b"def" + FS) == []
    assert framer.pending_bytes == 11
    assert framer.feed(CR + VT + b"MS") == [b"MSH|abcdef"]
    assert framer.pending_bytes == 2


def test_junk_alone_is_not_pending() -> None:
    framer = MLLPFramer()
    assert framer.feed(b"GET / HTTP/1.1\r\n\r\n" + FS + CR) == []
    assert framer.pending_bytes == 0
    assert framer.stats.discarded_bytes == 20
