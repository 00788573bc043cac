"""Sync sidecar: LoRA adapters shared across regions. `crdt` is the registry (a pure
state-based CRDT shipped in deltas), `clock` its hybrid logical clocks."""
