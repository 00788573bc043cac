"""The API tests' gateways: with the built-in issuer (tests/unit/app/auth/conftest.py), and over
two pools that each serve their own model (tests/unit/app/pools/conftest.py)."""

from tests.unit.app.auth.conftest import issuing
from tests.unit.app.pools.conftest import two_pools

__all__ = ["issuing", "two_pools"]
