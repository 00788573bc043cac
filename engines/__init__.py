"""Inference engines: an OpenAI-compatible server over a small engine interface, the
Transformers engine, the built-in model recipe and the fakes that tests and benchmarks use."""
