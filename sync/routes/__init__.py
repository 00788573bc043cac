"""The sidecar's routes, by caller: probes and Prometheus (`ops`), operators (`adapters`), other regions (`peers`)."""
