"""Talking to the other regions, in process: a large state goes in bounded messages that join
back to it, and anti-entropy rounds go on whatever a peer answers (a bad answer changes nothing)
and whatever bug a round meets (logged with its traceback)."""

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest

from sync import crdt
from sync.crdt import State
from sync.node import SyncNode
from sync.peers import Peers, encode_messages
from sync.settings import SyncSettings
from tests.unit.sync.hostile import Raw, broken, deep, dumps
from tests.unit.sync.replicas import Region, version


def test_a_large_state_goes_in_messages_under_the_limit_that_join_back_to_it() -> None:
    a = Region("a")
    for number in range(200):
        a.publish(f"adapter-{number}", version(number, region="a"))
    limit = 16 * 1024
    messages = list(encode_messages(a.state, limit))
    assert len(messages) > 1
    assert all(len(message) <= limit for message in messages)
    joined = State()
    for message in messages:
        joined = crdt.join(joined, crdt.decode(json.loads(message)))
    assert joined == a.state


def _answer_with(value: Any) -> bytes:
    return dumps({"delta": value, "summary": {}})


PEER_ANSWERS = {  # what a broken or hostile peer answers an anti-entropy round with
    "JSON nested 100,000 deep": b"[" * 100_000 + b"]" * 100_000,
    "a delta nested 5,000 deep": _answer_with(deep(5_000)),
    "a NaN weight": _answer_with(broken(("entries", "seeded", "contributions", "b", "weight"), "replace", Raw("NaN"))),
    "a 400-digit sequence": _answer_with(
        broken(("entries", "seeded", "contributions", "b", "seq"), "replace", 10**400)
    ),
    "a list": b"[]",
    "a summary that is a list": dumps({"delta": {"entries": {}, "dots": {}}, "summary": []}),
    "not JSON": b"\xff",
}


@pytest.mark.parametrize("answer", sorted(PEER_ANSWERS))
async def test_a_peers_bad_answer_never_ends_the_rounds_nor_changes_the_registry(tmp_path: Path, answer: str) -> None:
    settings = SyncSettings(
        region="a", peers=["http://peer.fake:8300"], data_dir=tmp_path, anti_entropy_interval_s=0.01
    )
    node = SyncNode(settings)
    state = node.state

    def fake_peer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=PEER_ANSWERS[answer], headers={"content-type": "application/json"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(fake_peer)) as client:
        peers = Peers(node, client)
        rounds = asyncio.create_task(peers.run())
        try:
            await asyncio.wait({rounds}, timeout=1.0)  # about 100 rounds' time
            assert not rounds.done(), rounds.exception()
        finally:
            rounds.cancel()
    assert peers.rounds >= 3
    assert node.state is state
    assert not peers.peers[0].up


def _raiser(error: Exception) -> Callable[..., NoReturn]:
    def fail(*args: object, **kwargs: object) -> NoReturn:
        raise error

    return fail


async def test_a_bug_in_an_anti_entropy_round_is_logged_and_the_rounds_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings = SyncSettings(
        region="a", peers=["http://peer.fake:8300"], data_dir=tmp_path, anti_entropy_interval_s=0.01
    )
    node = SyncNode(settings)
    monkeypatch.setattr(node, "differing", _raiser(ValueError("a bug")))
    answer = json.dumps({"delta": {"entries": {}, "dots": {}}, "summary": {}}).encode()

    def fake_peer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=answer, headers={"content-type": "application/json"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(fake_peer)) as client:
        peers = Peers(node, client)
        with caplog.at_level(logging.ERROR):
            rounds = asyncio.create_task(peers.run())
            try:
                await asyncio.wait({rounds}, timeout=0.5)
                assert not rounds.done(), rounds.exception()
            finally:
                rounds.cancel()
    assert peers.rounds >= 3
    assert not peers.peers[0].up
    bugs = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert bugs
    assert all(record.exc_info is not None and "peer.fake" in record.getMessage() for record in bugs)
