"""The vLLM pool tier: `python -m engines.vllm` starts vLLM's OpenAI server in its own environment."""
