"""Reading an engine's queue gauges from its Prometheus text (vLLM's names; our engine uses them too)."""

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["RUNNING", "WAITING", "read_engine_gauges"]

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"


def read_engine_gauges(text: str) -> dict[str, int]:
    """Each gauge summed over its label sets (one per model, or per engine core in vLLM)."""
    totals: dict[str, int] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in (RUNNING, WAITING):
                    totals[sample.name] = totals.get(sample.name, 0) + int(sample.value)
    except ValueError:  # not Prometheus text: no gauges rather than a failed probe
        return {}
    return totals
