"""A routing decision explains itself: where the request went, why, and what it passed."""

from harness.fake_nodes import FakeNode, decide, fake_nodes
from router import Router, routing_key


def test_the_decision_explains_itself() -> None:
    eu = fake_nodes(2, "eu", capacity=1)
    router: Router[FakeNode] = Router("eu")
    for node in [*eu, *fake_nodes(1, "us")]:
        router.add(node)
    for node in eu:
        node.load = 1
    text = decide(router, routing_key(model="m", session_id="s-1", user=None, prompt_head="")).explain()
    assert text.startswith("http://us-0.internal:8000 in us: saturated (key session:")
    assert "passed eu saturated" in text
