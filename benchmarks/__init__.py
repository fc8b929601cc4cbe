"""Benchmark scripts: each prints a table and appends it to benchmarks/RESULTS.md."""
