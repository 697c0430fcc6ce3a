"""The benchmark suite: ``python benchmarks/run.py`` (``--quick`` for a smoke run)."""
