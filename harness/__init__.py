"""What tests and benchmarks share: servers on free ports, a fault proxy, fakes, LoRA adapters, metric scraping."""
