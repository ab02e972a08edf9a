"""Microbenchmarks (pytest-benchmark): each compiled kernel beside its twin. Not tests: no assertions on time."""
