"""Benchmark generators: small, deterministic stand-ins for data sets that cannot be downloaded here."""
