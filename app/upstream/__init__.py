"""The gateway's HTTP client to engines, and how engines' errors are mapped."""
