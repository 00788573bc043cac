"""What probes, Prometheus and the gateway read from an engine: the model list, `/health`, and
the queue gauges under vLLM's names."""

import httpx


async def test_models_health_and_metrics(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/models")).json()["data"][0]["id"] == "fake-model"
    assert (await client.get("/health")).status_code == 200
    metrics = (await client.get("/metrics")).text
    assert 'vllm:num_requests_running{model_name="fake-model"} 0.0' in metrics
    assert 'vllm:num_requests_waiting{model_name="fake-model"} 0.0' in metrics
