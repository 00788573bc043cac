"""Incremental detokenization and stop strings, on a fake tokenizer where a token is one byte."""

from collections.abc import Sequence

import pytest

from engines.server.textstream import TextStream


def _decode(ids: Sequence[int]) -> str:
    return bytes(ids).decode(errors="replace")


def _run(text: str, stops: list[str], per_push: int = 1) -> tuple[list[str], str, bool]:
    stream = TextStream(_decode, stops)
    data = list(text.encode())
    deltas = [stream.push(data[i : i + per_push]) for i in range(0, len(data), per_push)]
    rest = stream.finish()
    return deltas, "".join(deltas) + rest, stream.stopped


def test_plain_text_passes_through_whole() -> None:
    deltas, text, stopped = _run("hello world", [])
    assert text == "hello world"
    assert all(deltas), "without stops every byte is released at once"
    assert not stopped


def test_multibyte_characters_are_never_split() -> None:
    deltas, text, _ = _run("café ☕ ok", [])
    assert text == "café ☕ ok"
    assert "\ufffd" not in "".join(deltas)
    assert "" in deltas, "a partial character is held until it completes"


def test_stop_string_ends_the_text_before_it() -> None:
    _, text, stopped = _run("one two STOP three", ["STOP"])
    assert text == "one two "
    assert stopped


def test_stop_string_split_across_tokens_never_leaks() -> None:
    deltas, _, _ = _run("abcXYZdef", ["XYZ"], per_push=1)
    assert "X" not in "".join(deltas)
    assert "".join(deltas) == "abc"


def test_earliest_of_several_stops_wins() -> None:
    _, text, _ = _run("aaa bbb ccc", ["ccc", "bbb"])
    assert text == "aaa "


def test_held_back_text_is_released_when_no_stop_follows() -> None:
    deltas, text, stopped = _run("abcXY", ["XYZ"])
    assert text == "abcXY"
    assert not stopped
    assert "".join(deltas) == "abc", "the possible start of a stop is held until the end"


def test_nothing_after_a_stop() -> None:
    stream = TextStream(_decode, ["!"])
    assert stream.push(list(b"hi!")) == "hi"
    assert stream.push(list(b"more")) == ""
    assert stream.finish() == ""


@pytest.mark.parametrize("per_push", [1, 2, 3, 7])
def test_chunking_does_not_change_the_text(per_push: int) -> None:
    text = "Grüße, 世界! The end."
    assert _run(text, ["end"], per_push)[1] == "Grüße, 世界! The "
