"""Talking to the other regions' sidecars: deltas pushed on change, anti-entropy rounds, blobs.

- Each peer has an outbox: local deltas joined into one state (joins are idempotent, so
  merging queued deltas loses nothing), sent by that peer's task as soon as it can; a peer
  that is down is retried with doubling backoff, and whatever piled up goes in one go.
- Every `anti_entropy_interval_s`, a round with each peer: send our buckets' digests, get
  back the entries that differ and the peer's digests, send it the entries it lacks (the
  full state, in bounded messages, to a peer that cannot compare digests).
- Messages are at most `max_message_bytes`: a larger state goes as several, by entry.
- Blobs are fetched from any peer that has them, resumed where a broken download stopped,
  and verified before use; a peer that sends bad bytes is skipped for the next one.
"""

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from sync import crdt
from sync.blobs import BlobMismatch
from sync.clock import ClockSkew
from sync.crdt import State
from sync.node import SyncNode

__all__ = ["Peer", "Peers", "encode_messages"]

log = logging.getLogger(__name__)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def encode_messages(state: State, limit: int) -> Iterator[bytes]:
    """`state` as JSON messages of at most `limit` bytes each, split by entry."""
    whole = _dumps(crdt.encode(state))
    if len(whole) <= limit:
        yield whole
        return
    batch: dict[str, crdt.Entry] = {}
    size = 0
    for name, entry in state.entries.items():
        one = len(_dumps(crdt.encode(State({name: entry}, {}))))
        if one > limit:
            log.error("registry entry %s is %d bytes, over the message limit %d: not sent", name, one, limit)
            continue
        if batch and size + one > limit:
            yield _dumps(crdt.encode(State(batch, state.dots)))
            batch, size = {}, 0
        batch[name] = entry
        size += one
    if batch:
        yield _dumps(crdt.encode(State(batch, state.dots)))


def _summary_answer(content: bytes) -> tuple[State, dict[str, str]]:
    """A peer's answer to `/sync/summary`: its delta and its digests; Malformed for anything else."""
    try:
        answer = json.loads(content)
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, or nested past Python's recursion limit
        raise crdt.Malformed(f"a peer's answer is not JSON: {exc}") from None
    theirs = answer.get("summary") if isinstance(answer, dict) else None
    if not isinstance(theirs, dict) or not all(isinstance(digest, str) for digest in theirs.values()):
        raise crdt.Malformed("a peer's answer is not {'delta': ..., 'summary': {bucket: digest}}")
    return crdt.decode(answer.get("delta")), theirs


@dataclass
class Peer:
    url: str
    outbox: State = field(default_factory=State)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    up: bool = False
    last_synced: float | None = None  # monotonic time of the last full anti-entropy round
    in_sync: bool = False  # the last round found nothing to exchange


class Peers:
    def __init__(self, node: SyncNode, client: httpx.AsyncClient) -> None:
        self.node = node
        self.settings = node.settings
        self.client = client
        self.peers = [Peer(str(url).rstrip("/")) for url in node.settings.peers]
        self.rounds = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        node.subscribe(self.queue)

    def queue(self, delta: State) -> None:
        for peer in self.peers:
            peer.outbox = crdt.join(peer.outbox, delta)
            peer.wake.set()

    async def run(self) -> None:
        """Push and anti-entropy until cancelled."""
        async with asyncio.TaskGroup() as group:
            for peer in self.peers:
                group.create_task(self._push_loop(peer))
            group.create_task(self._anti_entropy_loop())

    # --- deltas -----------------------------------------------------------------------------------

    async def _send_state(self, peer: Peer, state: State) -> None:
        for message in encode_messages(state, self.settings.max_message_bytes):
            response = await self.client.post(
                peer.url + "/sync/delta", content=message, headers={"content-type": "application/json"}
            )
            response.raise_for_status()
            self.bytes_sent += len(message)

    async def _push_loop(self, peer: Peer) -> None:
        backoff = self.settings.retry_base_s
        while True:
            await peer.wake.wait()
            peer.wake.clear()
            sending, peer.outbox = peer.outbox, State()
            if not sending.entries:
                continue
            try:
                await self._send_state(peer, sending)
            except httpx.HTTPError as exc:
                peer.outbox = crdt.join(sending, peer.outbox)  # nothing lost: sent again later
                self._down(peer, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.settings.retry_max_s)
                peer.wake.set()
            else:
                peer.up, backoff = True, self.settings.retry_base_s

    def _down(self, peer: Peer, exc: Exception) -> None:
        if peer.up:
            log.warning("peer %s is unreachable: %s", peer.url, exc)
        peer.up = False

    # --- anti-entropy -------------------------------------------------------------------------------

    async def anti_entropy_round(self, peer: Peer) -> None:
        """Digests out, differing entries back, then the entries the peer lacks."""
        request = _dumps({"region": self.node.region, "summary": self.node.summary()})
        response = await self.client.post(
            peer.url + "/sync/summary", content=request, headers={"content-type": "application/json"}
        )
        if response.status_code in (400, 404, 413):  # the peer cannot compare digests: the full state
            await self._send_state(peer, self.node.state)
            peer.up, peer.last_synced, peer.in_sync = True, time.monotonic(), False
            return
        response.raise_for_status()
        self.bytes_sent += len(request)
        self.bytes_received += len(response.content)
        received, theirs = _summary_answer(response.content)
        self.node.receive(received)
        missing = self.node.differing(theirs)
        if missing.entries:
            await self._send_state(peer, missing)
        peer.up, peer.last_synced = True, time.monotonic()
        peer.in_sync = not received.entries and not missing.entries

    async def _anti_entropy_loop(self) -> None:
        while True:
            for peer in self.peers:
                try:
                    await self.anti_entropy_round(peer)
                except (httpx.HTTPError, crdt.Malformed, ClockSkew) as exc:  # a peer down, or its bad answer
                    self._down(peer, exc)
                except Exception:  # a bug: logged with its traceback; it must not end the rounds with the others
                    log.exception("anti-entropy round with %s failed", peer.url)
                    peer.up = False
            self.rounds += 1
            await asyncio.sleep(self.settings.anti_entropy_interval_s)

    # --- blobs ------------------------------------------------------------------------------------------

    async def fetch_blob(self, digest: str, size: int) -> bool:
        """Get blob `digest` from whichever peer has it; whether it is now here, verified."""
        blobs = self.node.blobs
        if blobs.has(digest):
            return True
        for peer in sorted(self.peers, key=lambda p: not p.up):
            try:
                await self._download(peer, digest, size)
                blobs.finish(digest, size)
                return True
            except BlobMismatch as exc:
                log.warning("blob from %s refused: %s", peer.url, exc)
            except httpx.HTTPError as exc:
                log.info("blob %s not fetched from %s: %s", digest[:12], peer.url, exc)
        return False

    async def _download(self, peer: Peer, digest: str, size: int) -> None:
        blobs = self.node.blobs
        start = blobs.partial_size(digest)
        if start > size:
            blobs.discard_partial(digest)
            start = 0
        if start == size:
            return
        headers = {"range": f"bytes={start}-"} if start else {}
        async with self.client.stream("GET", f"{peer.url}/blobs/{digest}", headers=headers) as response:
            if response.status_code == 200 and start:
                blobs.discard_partial(digest)  # the peer sent it whole: start again
            elif response.status_code not in (200, 206):
                response.raise_for_status()
                raise httpx.HTTPError(f"unexpected status {response.status_code}")
            async for chunk in response.aiter_bytes():
                blobs.append(digest, chunk)
                self.bytes_received += len(chunk)
