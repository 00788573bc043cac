"""The API tests' gateway with the built-in issuer: the auth tests' (tests/unit/app/auth/conftest.py)."""

from tests.unit.app.auth.conftest import issuing

__all__ = ["issuing"]
