"""Benchmarks behind `smallmind bench`: each returns a dict of figures."""
