"""Engine gauges under vLLM's names, so the gateway reads every engine alike."""

from prometheus_client import CollectorRegistry, Gauge, generate_latest

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

    def render(self) -> bytes:
        return generate_latest(self.registry)
