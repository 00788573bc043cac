"""Sync sidecar: CRDT adapter registry and gossip between regions (not built yet)."""
