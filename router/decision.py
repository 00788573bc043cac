"""A routing decision that explains itself: where a request goes, and why there."""

import enum
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Decision", "Reason"]

N = TypeVar("N")


class Reason(enum.Enum):
    AFFINITY = "affinity"  # the key's own replica in the nearest region
    RECENT = "recent"  # the replica that served the key last (newest prefix), though not its ring home
    ADAPTER = "adapter"  # a replica with the request's adapter loaded, ahead of the key's own
    SPILL_OVER = "spill-over"  # the key's replica was at the load bound or saturated: the next on the ring
    EJECTED = "ejected"  # the key's replica was ejected, down or draining: the next on the ring
    SATURATED = "saturated"  # every replica of a nearer region was saturated: a farther region
    UNAVAILABLE = "unavailable"  # no replica of a nearer region could serve the model: a farther region
    OVERLOADED = "overloaded"  # every region saturated: the nearest one, for admission control to hold


@dataclass(frozen=True, slots=True)
class Decision(Generic[N]):
    node: N
    name: str
    region: str
    key: str
    reason: Reason
    home: str  # the key's own replica in the chosen region
    bound: int  # the load bound in the chosen region when it was chosen
    passed: tuple[tuple[str, str], ...] = ()  # regions passed over, with why
    trial: bool = False  # the half-open trial of an ejected replica

    def __str__(self) -> str:
        return self.explain()

    def explain(self) -> str:
        text = (
            f"{self.name} in {self.region}: {self.reason.value} (key {self.key}, home {self.home}, bound {self.bound}"
        )
        if self.passed:
            text += ", passed " + ", ".join(f"{region} {why}" for region, why in self.passed)
        if self.trial:
            text += ", half-open trial"
        return text + ")"
