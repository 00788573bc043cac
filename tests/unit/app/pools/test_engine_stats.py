"""The queue gauges and adapters in use the gateway reads from an engine's `/metrics`, under vLLM's names."""

from app.pools.engine_stats import EngineStats, read_engine_stats


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
