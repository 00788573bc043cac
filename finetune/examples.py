"""One chat example as a training sequence: the model's chat template renders it, and only the
assistant turns it is to learn (weight 1, the default) count in the loss. Tool calls and the
tools offered are rendered as the template writes them (the model learns to call tools as it
will be asked to at serving); a template that leaves them out refuses the line.

Which tokens are an assistant turn's is found from the template itself, whatever it looks like:
the turn's text is what rendering the chat through that turn adds to rendering it up to the
turn with the generation prompt (`<|im_start|>assistant\\n` and the like, which the model is
given, not taught); a chat that opens with the assistant learns from its content on. A token
belongs to the turn when all its characters do, by the tokenizer's offsets. The end-of-turn
marker is part of the turn: the model learns to stop. A line over the context length is
refused after one render, before the turn-by-turn ones.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from finetune.datasets import DatasetError, check_example, text_of

__all__ = ["IGNORE", "Encoded", "ExampleEncoder", "read_examples"]

IGNORE = -100  # the label of a token the loss skips (PyTorch's cross-entropy default)


@dataclass(frozen=True, slots=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # the token where it is learned, IGNORE elsewhere

    @property
    def trained(self) -> int:
        """How many of its tokens are learned."""
        return sum(label != IGNORE for label in self.labels)


class ExampleEncoder:
    """Chat examples as token ids and labels with `tokenizer`'s chat template; one longer than
    `max_length` tokens is refused with its line."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("the base model's tokenizer has no chat template to render examples with")
        self._tokenizer = tokenizer
        self.max_length = max_length

    def encode(self, example: dict[str, Any], line: int) -> Encoded:
        messages = [_template_message(message) for message in example["messages"]]
        tools: list[dict[str, Any]] | None = example.get("tools") or None
        text = self._render(messages, tools, generation_prompt=False)
        encoding = self._tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        input_ids: list[int] = encoding["input_ids"]
        if len(input_ids) > self.max_length:  # before the turn-by-turn renders: a long line costs one
            raise DatasetError(line, f"{len(input_ids)} tokens, over the model's context length of {self.max_length}")
        if tools and text == self._render(messages, None, generation_prompt=False):
            raise DatasetError(line, "the base model's chat template does not render `tools`")
        spans: list[tuple[int, int]] = []
        for index, message in enumerate(messages):
            if message["role"] != "assistant" or example["messages"][index].get("weight", 1) == 0:
                continue
            through = self._render(messages[: index + 1], tools, generation_prompt=False)
            if index:
                before = self._render(messages[:index], tools, generation_prompt=True)
                start, rendered_in_turn = len(before), through.startswith(before)
            else:  # a chat that opens with the assistant: no prompt to render before it
                start = through.find(message["content"]) if message["content"] else len(through)
                rendered_in_turn = start >= 0
            if not (text.startswith(through) and rendered_in_turn):
                raise DatasetError(line, "the chat template does not render the conversation turn by turn")
            if "tool_calls" in message:  # a template that leaves them out would teach the turn without its calls
                plain = {key: value for key, value in message.items() if key != "tool_calls"}
                if through == self._render([*messages[:index], plain], tools, generation_prompt=False):
                    raise DatasetError(
                        line, f"messages[{index}]: the base model's chat template does not render tool calls"
                    )
            spans.append((start, len(through)))
        labels = _labels(input_ids, encoding["offset_mapping"], spans)
        if all(label == IGNORE for label in labels):
            raise DatasetError(line, "no assistant token to learn from once rendered")
        return Encoded(input_ids, labels)

    def _render(
        self, messages: Sequence[dict[str, Any]], tools: list[dict[str, Any]] | None, *, generation_prompt: bool
    ) -> str:
        rendered: str = self._tokenizer.apply_chat_template(
            list(messages), tools=tools, tokenize=False, add_generation_prompt=generation_prompt
        )
        return rendered


def _template_message(message: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat message (checked) as chat templates take it: content as text (`""` for
    an assistant turn that only calls tools), `developer` as `system`, and each tool call's
    arguments as an object when they are one (templates write them out with `tojson`)."""
    role = "system" if message["role"] == "developer" else message["role"]
    rendered: dict[str, Any] = {"role": role, "content": text_of(message.get("content")) or ""}
    if message.get("tool_calls"):
        rendered["tool_calls"] = [_template_call(call) for call in message["tool_calls"]]
    if role == "tool" and message.get("tool_call_id"):
        rendered["tool_call_id"] = message["tool_call_id"]
    return rendered


def _template_call(call: dict[str, Any]) -> dict[str, Any]:
    function = call["function"]
    try:
        parsed = orjson.loads(function["arguments"])
    except orjson.JSONDecodeError:
        parsed = None
    arguments = parsed if isinstance(parsed, dict) else function["arguments"]
    shaped: dict[str, Any] = {"type": "function", "function": {"name": function["name"], "arguments": arguments}}
    if call.get("id"):
        shaped["id"] = call["id"]
    return shaped


def _labels(input_ids: list[int], offsets: Sequence[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """Each token where all its characters lie in one of `spans` (in order, not overlapping),
    IGNORE elsewhere: one sweep over both."""
    labels, span = [], 0
    for token, (begin, end) in zip(input_ids, offsets, strict=True):
        while span < len(spans) and spans[span][1] <= begin:
            span += 1
        inside = span < len(spans) and spans[span][0] <= begin and end <= spans[span][1]
        labels.append(token if inside else IGNORE)
    return labels


def read_examples(path: Path, start: int = 0) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """The examples of a JSONL file from byte `start` on, one line at a time (the file is never
    held whole): (line number from `start`'s line on, 1-based; the byte offset after the line;
    the example, checked). A bad line raises DatasetError naming it."""
    with path.open("rb") as file:
        file.seek(start)
        offset, number = start, 0
        for raw in file:
            number += 1
            offset += len(raw)
            if not raw.strip():
                continue
            try:
                example = orjson.loads(raw)
            except orjson.JSONDecodeError as error:
                raise DatasetError(number, f"not valid JSON ({error})") from None
            check_example(example, number)
            yield number, offset, example
