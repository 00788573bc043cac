"""Region order: the router's own region first, then the others nearest first, by the
round trips its health probes measure or by configured latencies."""

from harness.fake_nodes import FakeNode, fake_nodes
from router import Router


def _router(*nodes: FakeNode, latencies: dict[str, float] | None = None) -> Router[FakeNode]:
    router: Router[FakeNode] = Router("eu", latencies_ms=latencies)
    for node in nodes:
        router.add(node)
    return router


def test_other_regions_by_measured_round_trip() -> None:
    router = _router(*fake_nodes(1, "us"), *fake_nodes(1, "ap"), *fake_nodes(1, "eu"))
    for _ in range(3):
        router.probe("http://us-0.internal:8000", True, 0.0, rtt_ms=80.0)
        router.probe("http://ap-0.internal:8000", True, 0.0, rtt_ms=20.0)
    router.probe("http://eu-0.internal:8000", True, 0.0, rtt_ms=500.0)  # own region first, however far
    assert router.regions.rank(["us", "ap", "eu"]) == ["eu", "ap", "us"]
    for _ in range(10):  # the EWMA follows a change of round trip
        router.probe("http://us-0.internal:8000", True, 0.0, rtt_ms=5.0)
    assert router.regions.rank(["us", "ap", "eu"]) == ["eu", "us", "ap"]


def test_static_latencies_win_over_measured_ones() -> None:
    router = _router(*fake_nodes(1, "us"), *fake_nodes(1, "ap"), latencies={"us": 10.0, "ap": 90.0})
    router.probe("http://ap-0.internal:8000", True, 0.0, rtt_ms=1.0)
    assert router.regions.rank(["us", "ap", "eu"]) == ["eu", "us", "ap"]
