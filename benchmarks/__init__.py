"""Seed-vs-ours benchmarks: ``python -m benchmarks`` (see __main__.py); results in RESULTS.md."""
