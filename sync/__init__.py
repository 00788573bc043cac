"""Sync sidecar: LoRA adapters shared across regions. `crdt` is the registry (a pure
state-based CRDT shipped in deltas), `clock` its hybrid logical clocks, `merge` the stacking
of every region's contribution into the one adapter each region serves."""
