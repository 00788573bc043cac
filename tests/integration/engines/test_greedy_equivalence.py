"""At temperature 0 the engine's text is exactly Transformers' own greedy `generate()`."""

from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerBase

from harness.servers import ServerProcess
from tests.conftest import MODEL

PROMPTS = [
    [{"role": "user", "content": "Hello there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Write a sonnet about routers."}],
]


@dataclass(frozen=True)
class Reference:
    tokenizer: PreTrainedTokenizerBase
    model: LlamaForCausalLM


@pytest.fixture(scope="module")
def reference(builtin_model: Path) -> Reference:
    return Reference(AutoTokenizer.from_pretrained(builtin_model), LlamaForCausalLM.from_pretrained(builtin_model))


def _greedy(reference: Reference, prompt_ids: list[int], n: int) -> list[int]:
    tokenizer, model = reference.tokenizer, reference.model
    inputs = torch.tensor([prompt_ids])
    with torch.inference_mode():
        output = model.generate(  # type: ignore[misc]  # transformers types `self` as a Protocol mypy cannot match
            inputs,
            attention_mask=torch.ones_like(inputs),
            do_sample=False,
            max_new_tokens=n,
            pad_token_id=tokenizer.pad_token_id,
        )
    return [int(t) for t in output[0][len(prompt_ids) :]]


@pytest.mark.parametrize("messages", PROMPTS)
def test_chat_at_temperature_zero_equals_generate(
    engine: ServerProcess, reference: Reference, messages: list[dict[str, str]]
) -> None:
    tokenizer = reference.tokenizer
    prompt_ids: list[int] = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)  # type: ignore[assignment]
    expected_ids = _greedy(reference, prompt_ids, 48)
    body = {"model": MODEL, "messages": messages, "max_tokens": 48, "temperature": 0}
    answer = httpx.post(engine.url + "/v1/chat/completions", json=body, timeout=60).json()
    assert answer["choices"][0]["message"]["content"] == tokenizer.decode(expected_ids, skip_special_tokens=True)
    assert answer["usage"]["prompt_tokens"] == len(prompt_ids)
    assert answer["usage"]["completion_tokens"] == len(expected_ids)


def test_completion_from_token_ids_equals_generate(engine: ServerProcess, reference: Reference) -> None:
    tokenizer = reference.tokenizer
    prompt_ids = tokenizer.encode("def route(request):", add_special_tokens=False)
    expected = tokenizer.decode(_greedy(reference, prompt_ids, 32), skip_special_tokens=True)
    body = {"model": MODEL, "prompt": prompt_ids, "max_tokens": 32, "temperature": 0}
    answer = httpx.post(engine.url + "/v1/completions", json=body, timeout=60).json()
    assert answer["choices"][0]["text"] == expected
    streamed = ""
    with httpx.stream("POST", engine.url + "/v1/completions", json=body | {"stream": True}, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                streamed += httpx.Response(200, content=line[6:]).json()["choices"][0]["text"]
    assert streamed == expected


def test_seeded_sampling_is_repeatable(engine: ServerProcess) -> None:
    body = {"model": MODEL, "prompt": "import", "max_tokens": 24, "temperature": 1.0, "seed": 42}
    first, second = (httpx.post(engine.url + "/v1/completions", json=body, timeout=60).json() for _ in range(2))
    assert first["choices"][0]["text"] == second["choices"][0]["text"]
