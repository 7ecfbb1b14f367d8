"""Helpers shared by the tests and the benchmarks (not part of the runtime packages).

The benchmarks import them as ``tests.support`` when run from the repository root as modules
(``python -m benchmarks.bench_service``).
"""
