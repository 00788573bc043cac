"""The gateway: one OpenAI-compatible endpoint in front of engine pools in several regions."""
