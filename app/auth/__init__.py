"""OAuth2: verifying bearer JWT access tokens, and the built-in client-credentials issuer."""

from app.auth.guard import Guard, build_auth
from app.auth.verifier import Principal

__all__ = ["Guard", "Principal", "build_auth"]
