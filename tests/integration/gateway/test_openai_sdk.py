"""The stock OpenAI SDK, sync and async, against a real gateway and a real engine."""

from collections.abc import AsyncIterator, Iterator

import openai
import pytest

from harness.servers import ServerProcess
from tests.conftest import MODEL

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say something."},
]


@pytest.fixture
def client(gateway: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0) as sdk:
        yield sdk


@pytest.fixture
async def async_client(gateway: ServerProcess) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0) as sdk:
        yield sdk


def test_chat_completion(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0)
    choice = completion.choices[0]
    assert completion.model == MODEL
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage is not None
    assert completion.usage.completion_tokens <= 12
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_length_finish_reason_at_the_token_limit(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=3, seed=1)
    assert completion.usage is not None
    if completion.choices[0].finish_reason == "length":
        assert completion.usage.completion_tokens == 3
    else:  # the model happened to end its turn first
        assert completion.usage.completion_tokens < 3


def test_streaming_reassembles_to_the_same_text(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=24, temperature=0)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(parts) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage is not None
    assert whole.usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_legacy_completion(client: openai.OpenAI) -> None:
    completion = client.completions.create(model=MODEL, prompt="def main():", max_tokens=8, temperature=0)
    assert completion.choices[0].text
    assert completion.usage is not None
    assert completion.usage.completion_tokens <= 8


def test_models_lists_what_the_pools_serve(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [MODEL]


def test_unknown_model_raises_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert caught.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"messages": []}, "messages"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 2}, "n"),
        ({"extra_body": {"temperature": "hot"}}, "temperature"),
        ({"extra_body": {"max_tokens": "many"}}, "max_tokens"),
        ({"extra_body": {"stream": "yes"}}, "stream"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ],
)
def test_invalid_parameters_raise_bad_request(client: openai.OpenAI, params: dict[str, object], param: str) -> None:
    kwargs: dict[str, object] = {"model": MODEL, "messages": MESSAGES, **params}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    assert caught.value.param == param
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "invalid_request_error"


async def test_async_chat_and_stream(async_client: openai.AsyncOpenAI) -> None:
    completion = await async_client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10)
    assert completion.choices[0].message.content is not None
    stream = await async_client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10, stream=True)
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


async def test_async_errors(async_client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        await async_client.chat.completions.create(model="missing", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError):
        await async_client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=3)


def test_models_retrieve(client: openai.OpenAI) -> None:
    listed = {model.id for model in client.models.list()}
    assert MODEL in listed
    model = client.models.retrieve(MODEL)
    assert (model.id, model.object) == (MODEL, "model")
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("no/such:model")
    assert missing.value.code == "model_not_found"
