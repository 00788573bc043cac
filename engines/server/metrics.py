"""Engine gauges under vLLM's names, so the gateway reads every engine alike."""

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from engines.base import Engine

__all__ = ["EngineMetrics"]


class EngineMetrics:
    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        labels = {"model_name": engine.model_name}
        running = Gauge(
            "vllm:num_requests_running",
            "Number of requests being generated.",
            labelnames=list(labels),
            registry=self.registry,
        )
        waiting = Gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be generated.",
            labelnames=list(labels),
            registry=self.registry,
        )
        running.labels(**labels).set_function(lambda: engine.num_running)
        waiting.labels(**labels).set_function(lambda: engine.num_waiting)
        self.registry.register(_LoraRequestsInfo(engine))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LoraRequestsInfo(Collector):
    """vLLM's `vllm:lora_requests_info`: which adapters run and wait, in labels; the value is a timestamp."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "vllm:lora_requests_info",
            "Running stats on LoRA requests.",
            labels=["running_lora_adapters", "max_lora", "waiting_lora_adapters"],
        )
        family.add_metric(
            [
                ",".join(self._engine.adapters_of("running")),
                str(self._engine.max_loras),
                ",".join(self._engine.adapters_of("waiting")),
            ],
            time.time(),
        )
        yield family
