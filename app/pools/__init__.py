"""The engine pools: replicas, their health and load, membership, and the choice of a replica."""
