"""Payloads the benchmarks run."""
