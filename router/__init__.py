"""Routing as a pure library: consistent hashing with bounded loads, region order, outlier ejection.

Standard library only; time and live stats are arguments, so every decision can be replayed.
"""

from router.balance import DEFAULT_LOAD_FACTOR, LoadBound
from router.decision import Decision, Reason
from router.hashing import DEFAULT_VNODES, HashRing, stable_hash
from router.keys import PROMPT_HEAD_CHARS, routing_key
from router.outliers import BreakerState, Outcome, OutlierDetector, OutlierPolicy
from router.regions import RegionOrder
from router.router import Node, Router

__all__ = [
    "DEFAULT_LOAD_FACTOR",
    "DEFAULT_VNODES",
    "PROMPT_HEAD_CHARS",
    "BreakerState",
    "Decision",
    "HashRing",
    "LoadBound",
    "Node",
    "Outcome",
    "OutlierDetector",
    "OutlierPolicy",
    "Reason",
    "RegionOrder",
    "Router",
    "routing_key",
    "stable_hash",
]
