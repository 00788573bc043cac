"""The Transformers engine: `python -m engines.transformers --model ... --port ...`."""
