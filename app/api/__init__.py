"""The HTTP edge: routes, their dependencies, body parsing, the OpenAPI schema and HTTP limits."""
