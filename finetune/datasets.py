"""Chat-format JSONL datasets, checked line by line as they stream in, never held whole.

A line is one training example in OpenAI's chat format: `{"messages": [{"role": ...,
"content": ...}, ...]}` with at least one assistant turn (the turns the loss is computed on),
assistant turns that call tools (`tool_calls`) and the tools' answers (role `tool`), and the
tools offered (`tools`). A bad line is refused with its
number and the reason, so whoever uploaded the file can fix it. Token counts (the context
length) depend on the base model's tokenizer and are checked when a job validates the file.
"""

from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["MAX_LINE_BYTES", "DatasetError", "LineChecker", "check_example", "text_of"]

MAX_LINE_BYTES = 1 << 20  # one example; a longer line could not fit any served context anyway
_ROLES = ("system", "developer", "user", "assistant", "tool")


class DatasetError(ValueError):
    """A dataset that cannot be trained on: `line` (1-based; 0 for the file as a whole) and why."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}" if line else reason)
        self.line = line
        self.reason = reason


def text_of(content: Any) -> str | None:
    """A message's content as text: a string, or OpenAI's list of text parts joined; None for
    anything else (an image part, a number)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str) for part in content
    ):
        return "".join(part["text"] for part in content)
    return None


def check_example(example: Any, line: int) -> None:
    """Refuse an example that is not a chat with an assistant turn to learn, in OpenAI's
    fine-tuning format: `messages` (system, developer, user, assistant and tool turns; an
    assistant turn may call tools, `tool_calls`, with no content) and, optionally, `tools`."""
    if not isinstance(example, dict):
        raise DatasetError(line, "expected a JSON object with `messages`")
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DatasetError(line, "`messages` must be a non-empty list")
    _check_tools(example.get("tools"), line)
    if "functions" in example:
        raise DatasetError(line, "`functions` is the older form of `tools`, which this takes")
    for index, message in enumerate(messages):
        _check_message(message, f"messages[{index}]", line)
    if not any(m["role"] == "assistant" and m.get("weight", 1) == 1 for m in messages):
        raise DatasetError(line, "no assistant turn to learn from")


def _check_message(message: Any, where: str, line: int) -> None:
    if not isinstance(message, dict):
        raise DatasetError(line, f"{where} must be an object with `role` and `content`")
    role, calls = message.get("role"), message.get("tool_calls")
    if role not in _ROLES:
        raise DatasetError(line, f"{where}.role must be one of {', '.join(_ROLES)}")
    if "function_call" in message:
        raise DatasetError(line, f"{where}.function_call is the older form of `tool_calls`, which this takes")
    if calls is not None:
        if role != "assistant":
            raise DatasetError(line, f"{where}.tool_calls: only an assistant turn calls tools")
        _check_tool_calls(calls, f"{where}.tool_calls", line)
    content = message.get("content")
    if not (content is None and calls) and text_of(content) is None:
        raise DatasetError(line, f"{where}.content must be a string or a list of text parts")
    if role == "tool" and not isinstance(message.get("tool_call_id", ""), str):
        raise DatasetError(line, f"{where}.tool_call_id must be a string")
    weight = message.get("weight")
    if weight is not None and (role != "assistant" or weight not in (0, 1)):
        raise DatasetError(line, f"{where}.weight must be 0 or 1, on an assistant turn")


def _check_tool_calls(calls: Any, where: str, line: int) -> None:
    if not isinstance(calls, list) or not calls:
        raise DatasetError(line, f"{where} must be a non-empty list")
    for index, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not (
            isinstance(function, dict)
            and call.get("type", "function") == "function"
            and isinstance(function.get("name"), str)
            and function["name"]
            and isinstance(function.get("arguments"), str)
            and isinstance(call.get("id", ""), str)
        ):
            raise DatasetError(
                line,
                f'{where}[{index}] must be {{"type": "function", "function": {{"name": ..., "arguments": "<JSON>"}}}}',
            )


def _check_tools(tools: Any, line: int) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise DatasetError(line, "`tools` must be a list")
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not (
            isinstance(function, dict)
            and tool.get("type") == "function"
            and isinstance(function.get("name"), str)
            and function["name"]
            and isinstance(function.get("parameters", {}), dict)
        ):
            raise DatasetError(
                line,
                f'tools[{index}] must be {{"type": "function", "function": {{"name": ..., "parameters": {{...}}}}}}',
            )


@dataclass
class LineChecker:
    """Fed a file's bytes in chunks of any size: splits them into lines and checks each one,
    holding at most one line (`MAX_LINE_BYTES`) besides the chunk. `finish()` at the end."""

    lines: int = 0  # examples seen
    _partial: bytearray | None = None
    _line_number: int = 0
    _blank_at: int = 0  # the first blank line since the last example (fine only at the end)

    def feed(self, chunk: bytes) -> None:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                self._keep(chunk[start:])
                return
            if self._partial:
                self._keep(chunk[start:end])
                line, self._partial = bytes(self._partial), None
            else:
                line = chunk[start:end]
            self._line(line)
            start = end + 1

    def finish(self) -> None:
        if self._partial:
            line, self._partial = bytes(self._partial), None
            self._line(line)
        if self.lines == 0:
            raise DatasetError(0, "the file has no examples")

    def _keep(self, piece: bytes) -> None:
        if not piece:
            return
        if self._partial is None:
            self._partial = bytearray()
        if len(self._partial) + len(piece) > MAX_LINE_BYTES:
            raise DatasetError(self._line_number + 1, f"longer than {MAX_LINE_BYTES} bytes")
        self._partial += piece

    def _line(self, line: bytes) -> None:
        self._line_number += 1
        if len(line) > MAX_LINE_BYTES:
            raise DatasetError(self._line_number, f"longer than {MAX_LINE_BYTES} bytes")
        if not line.strip():
            self._blank_at = self._blank_at or self._line_number
            return
        if self._blank_at:
            raise DatasetError(self._blank_at, "empty line between examples")
        try:
            example = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            raise DatasetError(self._line_number, f"not valid JSON ({error})") from None
        check_example(example, self._line_number)
        self.lines += 1
