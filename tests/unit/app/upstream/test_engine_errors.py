"""How the gateway reads engines' error bodies and queue gauges, whichever engine answers."""

import json

import pytest

from app.pools.engine_stats import EngineStats, read_engine_stats
from app.upstream.engine_errors import normalize_error


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (  # vLLM 0.32
            400,
            {"error": {"message": "too long", "type": "BadRequestError", "param": "max_tokens", "code": 400}},
            {"message": "too long", "type": "invalid_request_error", "param": "max_tokens", "code": None},
        ),
        (  # older vLLM: fields at the top level
            404,
            {"object": "error", "message": "The model `x` does not exist.", "type": "NotFoundError", "code": 404},
            {"message": "The model `x` does not exist.", "type": "invalid_request_error", "param": None, "code": None},
        ),
        (  # already OpenAI-shaped: unchanged
            404,
            {"error": {"message": "m", "type": "invalid_request_error", "param": "model", "code": "model_not_found"}},
            {"message": "m", "type": "invalid_request_error", "param": "model", "code": "model_not_found"},
        ),
        (500, "Internal Server Error", {"message": "The engine answered HTTP 500.", "type": "server_error"}),
    ],
)
def test_error_bodies_are_normalized(status: int, body: object, expected: dict[str, object]) -> None:
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    error = json.loads(normalize_error(status, raw))["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert {k: error[k] for k in expected} == expected


def test_gauges_are_summed_over_label_sets() -> None:
    text = "\n".join(
        [
            "# TYPE vllm:num_requests_running gauge",
            'vllm:num_requests_running{engine="0",model_name="m"} 2.0',
            'vllm:num_requests_running{engine="1",model_name="m"} 1.0',
            "# TYPE vllm:num_requests_waiting gauge",
            'vllm:num_requests_waiting{engine="0",model_name="m"} 4.0',
            'vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="capacity"} 9.0',
        ]
    )
    assert read_engine_stats(text) == EngineStats(running=3, waiting=4)


def test_adapters_in_use_come_from_the_newest_lora_info_sample() -> None:
    text = "\n".join(
        [
            "# TYPE vllm:lora_requests_info gauge",
            'vllm:lora_requests_info{max_lora="2",running_lora_adapters="old",waiting_lora_adapters=""} 100.0',
            'vllm:lora_requests_info{max_lora="2",running_lora_adapters="sql,chat",waiting_lora_adapters="fr"} 200.0',
            'vllm:lora_requests_info{max_lora="2",running_lora_adapters="",waiting_lora_adapters=""} 150.0',
        ]
    )
    assert read_engine_stats(text).active_adapters == {"sql", "chat", "fr"}


def test_unreadable_metrics_give_no_stats() -> None:
    assert read_engine_stats("not { prometheus") == EngineStats()
