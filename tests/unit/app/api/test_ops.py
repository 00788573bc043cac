"""The operations routes (app/api/ops.py), through a gateway in process over two pools in two
regions: `/status` reports the pools and their health."""

from harness.inprocess import InProcessGateway


async def test_status_reports_pools_and_health(two_pools: InProcessGateway) -> None:
    status = (await two_pools.client.get("/status")).json()
    assert status["region"] == "north"
    assert [(p["name"], p["region"], p["healthy_replicas"]) for p in status["pools"]] == [
        ("north", "north", 1),
        ("south", "south", 1),
    ]
    assert all(r["rtt_ms"] is not None for p in status["pools"] for r in p["replicas"])
