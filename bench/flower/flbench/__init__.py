"""Flower baseline apps of the benchmarks (run only under bench/.venv)."""
