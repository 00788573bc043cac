"""Benchmarks of the gateway, engines, router and sync sidecar, with the reference servers they compare against."""
