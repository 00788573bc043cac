"""The model list (app/api/models.py), through a gateway in process over two pools."""

from harness.inprocess import InProcessGateway
from tests.unit.app.pools.conftest import FIRST, SECOND


async def test_models_are_the_union_of_the_pools(two_pools: InProcessGateway) -> None:
    models = (await two_pools.client.get("/v1/models")).json()["data"]
    assert sorted(m["id"] for m in models) == sorted([FIRST, SECOND])
