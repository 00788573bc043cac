"""An OpenAI-compatible HTTP server over any `engines.base.Engine`."""
