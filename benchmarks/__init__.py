"""Benchmarks, one folder, one naming scheme: train, memory, formats, photos, serve.

Each prints a Markdown table (and writes JSON with --json where it has one); `server.py` is
the one way of starting a real runtime/serve process, for the serve benchmark and the tests.
"""
