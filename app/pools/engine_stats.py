"""Reading an engine's load from its Prometheus text (vLLM's names; our engine uses them too)."""

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["LORA_INFO", "RUNNING", "WAITING", "EngineStats", "read_engine_stats"]

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
# Labels name the adapters of running and waiting requests; the value is when that was so.
LORA_INFO = "vllm:lora_requests_info"


@dataclass(frozen=True, slots=True)
class EngineStats:
    running: int | None = None
    waiting: int | None = None
    active_adapters: frozenset[str] = frozenset()


def read_engine_stats(text: str) -> EngineStats:
    """Queue gauges summed over label sets (one per model, or per engine core in vLLM), and the
    adapters in use by the newest `lora_requests_info` sample (vLLM keeps the older label sets)."""
    totals: dict[str, int] = {}
    newest: tuple[float, frozenset[str]] | None = None
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in (RUNNING, WAITING):
                    totals[sample.name] = totals.get(sample.name, 0) + int(sample.value)
                elif sample.name == LORA_INFO and (newest is None or sample.value >= newest[0]):
                    names = ",".join(
                        sample.labels.get(k, "") for k in ("running_lora_adapters", "waiting_lora_adapters")
                    )
                    newest = (sample.value, frozenset(name for name in names.split(",") if name))
    except ValueError:  # not Prometheus text: no stats rather than a failed probe
        return EngineStats()
    return EngineStats(totals.get(RUNNING), totals.get(WAITING), newest[1] if newest else frozenset())
