"""Benchmarks: run each from the repository root as a module, ``python -m benchmarks.bench_service``.

Run as modules, they import the project's packages and the process helpers shared with the tests
(``tests.support``) as packages, with no change to ``sys.path``.
"""
