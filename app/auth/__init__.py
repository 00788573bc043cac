"""OAuth2 for the gateway: the guard on its routes (the `oauth` package's checks) and the
built-in client-credentials issuer."""

from app.auth.guard import Guard, build_auth
from oauth import Principal

__all__ = ["Guard", "Principal", "build_auth"]
