"""Benchmarks: ``python -m bench [NAME ...] [--json]``; each is a module ``bench/<name>.py`` with ``run(args)``."""
