"""Benchmarks: speed and memory are measured here, side by side in one process, never in tests."""
