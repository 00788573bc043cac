"""What keeps the gateway safe under load and failure: admission, deadlines, drain,
idempotency, rate limits and the retry budget."""
