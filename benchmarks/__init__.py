"""Benchmarks that compare this toolkit with peer tools on generated phantom data."""
