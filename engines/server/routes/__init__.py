"""The engine's routes: generation (`generate`, the only ones traced), adapters, and what
probes, scrapes and the gateway's polls read (`ops`)."""
