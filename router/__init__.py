"""Routing: consistent hashing with bounded loads, region order, outlier ejection (not built yet)."""
