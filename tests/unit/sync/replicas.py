"""Registry replicas for the CRDT tests: versions made from a seed, and regions that mutate
through the CRDT's delta mutators and join what they are sent."""

import hashlib
from dataclasses import dataclass, field

from sync import crdt
from sync.clock import Timestamp
from sync.crdt import FileRef, State, Version

__all__ = ["BASES", "Region", "version"]

BASES = ("switchyard-tiny-v1", "other-base")


def version(seed: int, base: str = BASES[0], region: str = "r0") -> Version:
    files = (
        FileRef("adapter_config.json", 100 + seed, hashlib.sha256(f"config{seed}".encode()).hexdigest()),
        FileRef("adapter_model.safetensors", 5000 + seed, hashlib.sha256(f"weights{seed}".encode()).hexdigest()),
    )
    return Version(crdt.manifest_digest(files), base, 8, files, Timestamp(1000 + seed, 0, region))


@dataclass
class Region:
    """A region's replica: its state and clock, mutating through the CRDT's delta mutators."""

    name: str
    state: State = field(default_factory=State)
    wall: int = 2_000  # after every test version's own timestamp

    def stamp(self) -> Timestamp:
        self.wall += 1
        return Timestamp(self.wall, 0, self.name)

    def apply(self, delta: State) -> State:
        self.state = crdt.join(self.state, delta)
        return delta

    def publish(self, name: str, v: Version, weight: float = 1.0) -> State:
        return self.apply(crdt.publish(self.state, name, v, weight, self.name, self.stamp()))

    def retire(self, name: str) -> State:
        return self.apply(crdt.retire(self.state, name, self.name, self.stamp()))

    def withdraw(self, name: str) -> State:
        return self.apply(crdt.withdraw(self.state, name, self.name, self.stamp()))

    def revoke(self, name: str, digest: str) -> State:
        return self.apply(crdt.revoke(self.state, name, digest, self.name, self.stamp()))
