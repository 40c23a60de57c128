"""Benchmarks and fault-injection runs (`make bench`, `make chaos`): scripts, not tests."""
