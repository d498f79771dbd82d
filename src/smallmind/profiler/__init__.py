"""The profiler: records scopes, measures the machine's peaks, writes reports."""
