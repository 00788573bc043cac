"""Datasets checked as they stream: every bad line is named with its reason, however the file
is cut into chunks, and a line is never held past the limit."""

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from finetune.datasets import MAX_LINE_BYTES, DatasetError, LineChecker


def _example(answer: str = "pong pong pong") -> bytes:
    return json.dumps(
        {"messages": [{"role": "user", "content": "ping"}, {"role": "assistant", "content": answer}]}
    ).encode()


GOOD = b"\n".join(_example(f"answer {n}") for n in range(5)) + b"\n"
_ask = {"role": "user", "content": "weather in Paris?"}
_answer = {"role": "assistant", "content": "Sunny."}
_CALL = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
_TOOL = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}


def _line(*messages: dict[str, Any], **fields: Any) -> bytes:
    return json.dumps({"messages": list(messages), **fields}).encode() + b"\n"


def test_openais_whole_chat_format_is_taken() -> None:
    """Developer turns, content as text parts, an assistant turn that only calls tools (content
    null or absent), the tool's answer, the tools offered."""
    calling = {"role": "assistant", "content": None, "tool_calls": [_CALL]}
    lines = [
        _line(
            {"role": "developer", "content": "Be brief."},
            _ask,
            calling,
            {"role": "tool", "tool_call_id": "call_1", "content": "sun"},
            _answer,
            tools=[_TOOL],
        ),
        _line(
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "tool_calls": [_CALL]},
        ),
    ]
    assert _check(b"".join(lines)).lines == 2


def _check(data: bytes, chunk: int = 7) -> LineChecker:
    checker = LineChecker()
    for start in range(0, len(data), chunk):
        checker.feed(data[start : start + chunk])
    checker.finish()
    return checker


@given(st.lists(st.integers(min_value=1, max_value=len(GOOD)), min_size=1, max_size=20))
def test_any_chunking_reads_the_same_examples(cuts: list[int]) -> None:
    checker, start = LineChecker(), 0
    for cut in sorted(cuts):
        checker.feed(GOOD[start:cut])
        start = max(start, cut)
    checker.feed(GOOD[start:])
    checker.finish()
    assert checker.lines == 5


def test_a_last_line_without_a_newline_and_trailing_blank_lines_are_fine() -> None:
    assert _check(GOOD.rstrip(b"\n")).lines == 5
    assert _check(GOOD + b"\n\n  \n").lines == 5


@pytest.mark.parametrize(
    ("data", "line", "reason"),
    [
        (GOOD + b'{"messages": [}\n', 6, "not valid JSON"),
        (_example() + b"\n" + b"\xff\xfe\n", 2, "not valid JSON"),
        (b'[{"messages": []}]\n', 1, "expected a JSON object"),
        (b"prompt,completion\nping,pong\n", 1, "not valid JSON"),
        (GOOD + json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(), 6, "no assistant turn"),
        (json.dumps({"messages": []}).encode(), 1, "non-empty list"),
        (json.dumps({"prompt": "a", "completion": "b"}).encode(), 1, "non-empty list"),
        (json.dumps({"messages": [{"role": "robot", "content": "x"}]}).encode(), 1, "role must be one of"),
        (json.dumps({"messages": [{"role": "assistant", "content": 3}]}).encode(), 1, "content must be a string"),
        (json.dumps({"messages": [{"role": "assistant", "content": "a", "weight": 0}]}).encode(), 1, "no assistant"),
        (json.dumps({"messages": [{"role": "user", "content": "a", "weight": 1}]}).encode(), 1, "weight must be"),
        (_example() + b"\n\n" + _example(), 2, "empty line between examples"),
        (_line(_ask, {"role": "assistant", "content": None}), 1, "content must be a string or a list of text parts"),
        (_line(_ask, {"role": "assistant", "content": [{"type": "image_url"}]}), 1, "list of text parts"),
        (_line(_ask, {"role": "user", "content": "x", "tool_calls": [_CALL]}, _answer), 1, "only an assistant turn"),
        (_line(_ask, {"role": "assistant", "tool_calls": []}), 1, "tool_calls must be a non-empty list"),
        (_line(_ask, {"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}), 1, "tool_calls[0] must be"),
        (
            _line(_ask, {"role": "assistant", "tool_calls": [{"type": "x", "function": _CALL["function"]}]}),
            1,
            "must be",
        ),
        (_line(_ask, {"role": "assistant", "content": "a", "function_call": {}}), 1, "older form of `tool_calls`"),
        (_line(_ask, {"role": "tool", "content": "r", "tool_call_id": 3}, _answer), 1, "tool_call_id must be"),
        (_line(_ask, _answer, tools=[{"type": "function", "function": {}}]), 1, "tools[0] must be"),
        (_line(_ask, _answer, tools={"type": "function"}), 1, "`tools` must be a list"),
        (_line(_ask, _answer, functions=[]), 1, "older form of `tools`"),
    ],
)
def test_a_bad_line_is_named_with_its_reason(data: bytes, line: int, reason: str) -> None:
    with pytest.raises(DatasetError) as refused:
        _check(data)
    assert refused.value.line == line
    assert reason in refused.value.reason
    assert str(refused.value).startswith(f"line {line}: ")


@pytest.mark.parametrize("data", [b"", b"\n", b"  \n\n"])
def test_a_file_without_examples_is_refused(data: bytes) -> None:
    with pytest.raises(DatasetError, match="no examples") as refused:
        _check(data)
    assert refused.value.line == 0


def test_a_line_over_the_limit_is_refused_before_it_is_held_whole() -> None:
    checker = LineChecker()
    checker.feed(_example() + b"\n")
    for _ in range(MAX_LINE_BYTES // 65536):
        checker.feed(b"x" * 65536)  # no newline: one growing line, up to the limit
    with pytest.raises(DatasetError, match="longer than") as refused:
        checker.feed(b"x")
    assert refused.value.line == 2
